"""Joining a mall: who may join on payment, what a mini-program join must carry."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

from kit.errors import InvalidInput


class JoinOnPayment(enum.StrEnum):
    ALWAYS = "always"  # every payer becomes a member
    AUTHORIZED = "authorized"  # only payers who authorised the mall's points service


@dataclass(frozen=True)
class JoinPolicy:
    join_on_payment: JoinOnPayment = JoinOnPayment.ALWAYS
    #: How long a non-member's payment waits to be attributed if they join (days).
    window_days: int = 7


DEFAULT_POLICY = JoinPolicy()


@dataclass(frozen=True)
class AuthorizationChange:
    """A shopper authorised the mall's points service (MALL_AUTH.ACTIVATE_CARD)."""

    event_id: str
    appid: str
    openid: str
    auth_type: str
    changed_at: datetime

    def __post_init__(self) -> None:
        missing = [f for f in ("appid", "openid") if not getattr(self, f)]
        if missing:
            raise InvalidInput("authorization_incomplete", f"missing {', '.join(missing)}")


_MAINLAND_MOBILE = re.compile(r"1[3-9]\d{9}")


def normalise_phone(raw: str) -> str:
    """A mainland mobile number as E.164 (+8613800138000); accepts it bare or with +86."""
    digits = re.sub(r"[\s-]", "", raw)
    for prefix in ("+86", "0086"):
        if digits.startswith(prefix):
            digits = digits[len(prefix) :]
            break
    if not _MAINLAND_MOBILE.fullmatch(digits):
        raise InvalidInput("invalid_phone", "phone must be a mainland mobile number")
    return f"+86{digits}"


def mask_phone(e164: str) -> str:
    """+8613800138000 → 138****8000; empty stays empty."""
    local = e164.removeprefix("+86")
    return f"{local[:3]}****{local[-4:]}" if local else ""
