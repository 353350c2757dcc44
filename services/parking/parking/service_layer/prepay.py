"""The member settles their stay before leaving ("pay now, the gate just opens").

The member's quote is the gate's: same fee, same benefits, and points for the hours still
needed (held at the quote, as at the gate). Settling records the quote on the still-open
session; from then on the exit gate's quote carries the settled benefits, shows nothing payable
until the leave-by time (settlement + grace), and charges the time after it. Only quotes that
leave nothing to pay settle here: money is WeChat Pay's pay-score or the exit machine's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from kit.db import Connection
from kit.errors import Conflict, NotFound

from parking.adapters import coupons, plates, quotes, sessions
from parking.adapters.quotes import QuoteRow
from parking.domain.sessions import Session, Status
from parking.service_layer.config_cache import ConfigCache
from parking.service_layer.ports import PointsPort
from parking.service_layer.quotes import Quoted, price_session, store_quote

#: Names the quote ids derived from a member's request ids.
_REQUESTS = uuid.UUID("7d3b8f5e-2c1a-4e6f-9b0d-5a4c3e2f1d0b")


def quote_id_for(mall_id: str, member_id: str, request_id: str) -> str:
    """The quote a member's request makes: the same request, the same quote (and the same
    points hold, whose request id is the quote's)."""
    return str(uuid.uuid5(_REQUESTS, f"{mall_id}/{member_id}/{request_id}"))


def _no_session() -> NotFound:
    return NotFound("session_not_found", "none of the member's vehicles is inside")


async def _own_open_session(conn: Connection, mall_id: str, member_id: str) -> Session:
    owned = await plates.for_member(conn, mall_id, member_id)
    session = (
        await sessions.find_open_for_plates(conn, mall_id, [p.plate_number for p in owned])
        if owned
        else None
    )
    if session is None or session.member_id != member_id:
        raise _no_session()
    return session


async def quote_member(
    pool: asyncpg.Pool,
    config: ConfigCache,
    points: PointsPort | None,
    *,
    mall_id: str,
    member_id: str,
    use_points: bool,
    request_id: str,
    now: datetime,
) -> tuple[Quoted, bool]:
    """The member's quote for leaving now, and whether an earlier hold is to be released."""
    quote_id = quote_id_for(mall_id, member_id, request_id) if request_id else None
    async with pool.acquire() as conn:
        if quote_id is not None:
            known = await quotes.get_quote(conn, mall_id, quote_id)
            if known is not None:
                again = await sessions.get(conn, mall_id, known.session_id)
                assert again is not None
                return Quoted(again, known), False
        session = await _own_open_session(conn, mall_id, member_id)
        if session.prepaid:
            raise Conflict("session_prepaid", "the stay is settled already; drive to the exit")
        priced, version, minutes, valid_minutes = await price_session(
            conn,
            config,
            session,
            now,
            allow_points=points is not None,
            points_wanted=use_points,
        )
        try:
            return await store_quote(
                conn,
                points,
                session,
                priced,
                exit_at=now,
                schedule_version=version,
                minutes=minutes,
                valid_minutes=valid_minutes,
                quote_id=quote_id,
            )
        except asyncpg.UniqueViolationError:  # the same request, at the same moment
            assert quote_id is not None
            known = await quotes.get_quote(conn, mall_id, quote_id)
            assert known is not None
            return Quoted(session, known), False


@dataclass(frozen=True)
class Prepaid:
    session: Session
    quote: QuoteRow
    #: Points holds decided now (to confirm or release right away).
    holds_decided: bool


async def settle_member(
    conn: Connection,
    *,
    mall_id: str,
    member_id: str,
    session_id: str,
    quote_id: str,
    request_id: str,
    now: datetime,
    grace: timedelta,
) -> Prepaid:
    """Settle the member's open session on their quote; the same request (or the same quote)
    again returns the settlement unchanged."""
    async with conn.transaction():
        session = await sessions.get(conn, mall_id, session_id, lock=True)
        if session is None or session.member_id != member_id or session.status != Status.OPEN:
            raise _no_session()
        if session.prepaid:
            assert session.prepaid_quote_id is not None
            same_request = bool(request_id) and request_id == await sessions.prepay_request_id(
                conn, mall_id, session_id
            )
            if same_request or session.prepaid_quote_id == quote_id:
                settled = await quotes.get_quote(conn, mall_id, session.prepaid_quote_id)
                assert settled is not None
                return Prepaid(session, settled, False)
            raise Conflict("session_prepaid", "the stay is settled already; drive to the exit")
        quote = await quotes.get_quote(conn, mall_id, quote_id, lock=True)
        if quote is None or quote.session_id != session.session_id:
            raise NotFound("quote_not_found", f"no quote {quote_id} for this session")
        if now > quote.valid_until or quote.hold_state in ("release", "released"):
            raise Conflict("quote_expired", "the quote is no longer valid; quote again")
        if quote.payable_fen > 0:
            raise Conflict(
                "payment_required",
                f"{quote.payable_fen} fen is left to pay: pay at the exit (or by pay-score)",
            )
        coupon_ids = [b["coupon_id"] for b in quote.benefits if b["kind"] == "coupon"]
        if await coupons.use(conn, mall_id, coupon_ids, session_id, now) != len(coupon_ids):
            raise Conflict("coupon_used", "a coupon on the quote was used meanwhile; quote again")
        prepaid = await sessions.prepay(
            conn,
            mall_id,
            session_id,
            quote_id=quote.quote_id,
            request_id=request_id,
            at=now,
            until=now + grace,
        )
        return Prepaid(prepaid, quote, True)
