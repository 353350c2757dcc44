"""Shopping guides (导购, 支付即服务): a tenant's staff a shopper binds to after paying.

A shopper has at most one guide per tenant (binding to another guide of the tenant moves
them); a guide's POS sees only the members bound to that guide.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from kit.errors import InvalidInput

_GUIDE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


@dataclass(frozen=True)
class Guide:
    mall_id: str
    guide_id: str
    tenant_id: str
    store_id: str
    name: str


@dataclass(frozen=True)
class GuideMember:
    member_id: str
    tier_code: str
    phone: str
    bound_at: datetime


def check_guide(guide_id: str, name: str) -> None:
    if not _GUIDE_ID.fullmatch(guide_id):
        raise InvalidInput(
            "invalid_guide_id", "guide_id is 1-40 lower-case letters, digits and '-'"
        )
    if not name.strip() or len(name) > 100:
        raise InvalidInput("invalid_name", "name is 1-100 characters")


def page_token(bound_at: datetime, member_id: str) -> str:
    raw = f"{bound_at.isoformat()}|{member_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_page_token(token: str) -> tuple[datetime, str] | None:
    """The (bound_at, member_id) cursor of a token this API gave; None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        at, member_id = raw.split("|")
        return datetime.fromisoformat(at), str(uuid.UUID(member_id))
    except ValueError:
        raise InvalidInput("invalid_page_token", "page_token is not one this API gave") from None
