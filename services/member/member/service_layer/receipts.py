"""What the gateway shows a shopper of their own membership: their payments (e-receipts) and
their shopping guides, and the guides of a store (the "add your guide" offer)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from kit.db import Connection
from kit.errors import InvalidInput

from member.adapters import guides, receipts
from member.adapters.receipts import MemberPayment
from member.domain.guides import Guide

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _required(**fields: str) -> None:
    missing = [name for name, value in fields.items() if not value]
    if missing:
        raise InvalidInput("missing_field", f"required: {', '.join(missing)}")


def _member_key(member_id: str) -> None:
    try:
        uuid.UUID(member_id)
    except ValueError:
        raise InvalidInput("invalid_member_id", "member_id is not a member id") from None


def page_token(paid_at: datetime, transaction_id: str) -> str:
    """``<paid_at in epoch microseconds>:<transaction_id>``: any token of that shape is a
    position in the list, so a client cannot make one that fails later."""
    delta = paid_at - EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{micros}:{transaction_id}"


def parse_page_token(token: str) -> tuple[datetime, str] | None:
    """The (paid_at, transaction_id) cursor of a token; None for the first page."""
    if not token:
        return None
    micros, sep, transaction_id = token.partition(":")
    if not sep or not micros.isdigit() or len(micros) > 18 or not transaction_id:
        raise InvalidInput("invalid_page_token", "page_token is not one this API gave")
    return EPOCH + timedelta(microseconds=int(micros)), transaction_id


async def list_member_payments(
    conn: Connection,
    *,
    mall_id: str,
    member_id: str,
    page_size: int,
    token: str,
    transaction_id: str = "",
) -> tuple[list[MemberPayment], str]:
    """One page of the member's payments, newest first, and the next page's token."""
    _required(mall_id=mall_id, member_id=member_id)
    _member_key(member_id)
    if page_size < 0:
        raise InvalidInput("invalid_page_size", "page_size must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    page = await receipts.member_payments(
        conn,
        mall_id,
        member_id,
        transaction_id=transaction_id or None,
        after=parse_page_token(token),
        limit=size + 1,
    )
    more = len(page) > size
    page = page[:size]
    return page, page_token(page[-1].paid_at, page[-1].transaction_id) if more else ""


async def list_member_guides(
    conn: Connection, *, mall_id: str, member_id: str
) -> list[tuple[Guide, datetime]]:
    _required(mall_id=mall_id, member_id=member_id)
    _member_key(member_id)
    return await guides.member_guides(conn, mall_id, member_id)


async def list_store_guides(conn: Connection, *, mall_id: str, store_id: str) -> list[Guide]:
    _required(mall_id=mall_id, store_id=store_id)
    return await guides.store_guides(conn, mall_id, store_id)
