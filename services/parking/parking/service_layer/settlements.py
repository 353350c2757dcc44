"""A vehicle leaving: the session settled as the gate took payment, and what follows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog
from eventbus.outbox import add_events
from kit.db import Connection
from kit.errors import Conflict, NotFound

from parking.adapters import anomalies, coupons, quotes, sessions, wechat_calls
from parking.adapters.events import session_settled
from parking.adapters.quotes import QuoteRow
from parking.adapters.sessions import Settled
from parking.domain.sessions import (
    AnomalyKind,
    PaymentMethod,
    Session,
    Status,
    settlement_anomaly,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Settlement:
    mall_id: str
    car_park_id: str
    session_id: str
    quote_id: str
    paid_fen: int
    method: PaymentMethod
    exited_at: datetime
    gate_id: str = ""


async def settle_exit(conn: Connection, settlement: Settlement) -> tuple[Session, bool]:
    """The settled session, and whether a points hold is now to be confirmed or released.
    Settling the same session with the same quote again returns it unchanged."""
    s = settlement
    async with conn.transaction():
        session = await sessions.get(conn, s.mall_id, s.session_id, lock=True)
        if session is None or session.car_park_id != s.car_park_id:
            raise NotFound("session_not_found", f"no session {s.session_id} in this car park")
        if session.status == Status.SETTLED:
            if session.settled_quote_id == s.quote_id:
                return session, False
            raise Conflict("session_settled", "the session was settled with another quote")
        if session.status == Status.ABANDONED:
            raise Conflict("session_closed", "the vehicle entered again; this session is closed")
        quote = await quotes.get_quote(conn, s.mall_id, s.quote_id, lock=True)
        if quote is None or quote.session_id != session.session_id:
            raise NotFound("quote_not_found", f"no quote {s.quote_id} for this session")
        if s.exited_at > quote.valid_until or quote.hold_state in ("release", "released"):
            raise Conflict("quote_expired", "the quote is no longer valid; quote again")
        if s.method == PaymentMethod.PAY_SCORE and not session.pay_score:
            raise Conflict("pay_score_not_enabled", "this vehicle is not in pay-score parking")
        if s.method == PaymentMethod.POINTS and quote.hold_points == 0 and not session.prepaid:
            raise Conflict("no_points_on_quote", "the quote does not use points")
        coupon_ids = [b["coupon_id"] for b in quote.benefits if b["kind"] == "coupon"]
        if await coupons.use(conn, s.mall_id, coupon_ids, s.session_id, s.exited_at) != len(
            coupon_ids
        ):
            raise Conflict("coupon_used", "a coupon on the quote was used meanwhile; quote again")
        done = await sessions.settle(
            conn,
            s.mall_id,
            s.session_id,
            exited_at=s.exited_at,
            exit_gate=s.gate_id,
            quote=quote,
            paid_fen=s.paid_fen,
            method=s.method,
        )
        settled = done.session
        problem = settlement_anomaly(s.method, quote.payable_fen, s.paid_fen)
        if problem:
            await anomalies.record_anomaly(
                conn,
                mall_id=s.mall_id,
                car_park_id=s.car_park_id,
                plate_number=session.plate_number,
                session_id=session.session_id,
                kind=AnomalyKind.UNDERPAID.value,
                detail=problem,
            )
        await add_events(conn, [session_settled(settled, quote.benefits)])
        await _queue_exit_calls(conn, done, quote)
        return settled, done.holds_decided > 0


async def _queue_exit_calls(conn: Connection, done: Settled, quote: QuoteRow) -> None:
    session = done.session
    assert session.exited_at is not None
    if done.openid:  # the member linked this plate to WeChat: parking state OUT
        await wechat_calls.enqueue(
            conn,
            session.mall_id,
            session.session_id,
            "state_out",
            {
                "appid": done.appid,
                "openid": done.openid,
                "plate_number": session.plate_number,
                "time": session.exited_at.isoformat(),
            },
        )
    if session.payment_method == PaymentMethod.PAY_SCORE:
        await wechat_calls.enqueue(
            conn,
            session.mall_id,
            session.session_id,
            "pay_score_deduction",
            {
                "total": quote.payable_fen,
                "plate_number": session.plate_number,
                "start_time": session.entered_at.isoformat(),
                "end_time": session.exited_at.isoformat(),
                "charging_duration": int((session.exited_at - session.entered_at).total_seconds()),
            },
        )
