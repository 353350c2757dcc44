"""The car park's gates: entry, exit quote (with benefits and points), exit settlement."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import structlog
from eventbus.outbox import add_events
from kit.db import Connection
from kit.errors import AppError, Conflict, NotFound

from parking.adapters import coupons, members, plates, sessions, wechat_calls
from parking.adapters.events import session_settled, session_started
from parking.adapters.members import MemberFacts
from parking.adapters.sessions import QuoteRow
from parking.domain.benefits import Benefit, BenefitKind, Priced, price
from parking.domain.fees import parked_minutes
from parking.domain.plates import Color
from parking.domain.sessions import (
    AnomalyKind,
    PaymentMethod,
    Session,
    Status,
    settlement_anomaly,
)
from parking.service_layer.config_cache import ConfigCache
from parking.service_layer.ports import PointsPort

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Entry:
    mall_id: str
    car_park_id: str
    plate_number: str
    color: Color | None
    entered_at: datetime
    entry_ref: str
    gate_id: str = ""


async def record_entry(conn: Connection, entry: Entry) -> tuple[Session, bool]:
    """The session of this entry and whether it had been recorded before (a gate resend)."""
    found = await sessions.entry_context(
        conn, entry.mall_id, entry.car_park_id, entry.entry_ref, entry.plate_number
    )
    if found.known_session_id is not None:
        return await _known(conn, entry), True
    plate = found.plate
    async with conn.transaction():
        if found.inside_session_id is not None:
            await _close_missed_exit(conn, entry)
        session = Session(
            mall_id=entry.mall_id,
            session_id=str(uuid.uuid4()),
            car_park_id=entry.car_park_id,
            plate_number=entry.plate_number,
            plate_color=(
                entry.color.value if entry.color else (plate.plate_color if plate else "")
            ),
            member_id=plate.member_id if plate else None,
            status=Status.OPEN,
            entered_at=entry.entered_at,
        )
        try:
            created = await sessions.insert(
                conn, session, entry_ref=entry.entry_ref, entry_gate=entry.gate_id
            )
        except asyncpg.UniqueViolationError:  # another entry of this plate at the same moment
            raise Conflict("retry", "the vehicle's session changed meanwhile; send again") from None
        if created is None:  # the same entry_ref committed meanwhile
            return await _known(conn, entry), True
        await add_events(conn, [session_started(created)])
        if plate is not None and plate.openid:
            await _queue_entry_calls(conn, created, plate)
        return created, False


async def _known(conn: Connection, entry: Entry) -> Session:
    known = await sessions.find_by_ref(conn, entry.mall_id, entry.car_park_id, entry.entry_ref)
    assert known is not None
    return known


async def _close_missed_exit(conn: Connection, entry: Entry) -> None:
    """The plate is still inside: the exit camera missed it. Close the old stay unpaid and
    keep it for the operator."""
    inside = await sessions.find_open(
        conn, entry.mall_id, entry.car_park_id, entry.plate_number, lock=True
    )
    if inside is None:
        return
    await sessions.abandon(conn, entry.mall_id, inside.session_id)
    await sessions.decide_holds(
        conn, entry.mall_id, inside.session_id, keep_quote_id=None, confirm=False
    )
    await sessions.record_anomaly(
        conn,
        mall_id=entry.mall_id,
        car_park_id=entry.car_park_id,
        plate_number=entry.plate_number,
        session_id=inside.session_id,
        kind=AnomalyKind.ENTRY_WHILE_INSIDE.value,
        detail=f"entered again at {entry.entered_at.isoformat()} without an exit since "
        f"{inside.entered_at.isoformat()}; the earlier session was closed unpaid",
    )


async def _queue_entry_calls(conn: Connection, session: Session, plate: plates.PlateRow) -> None:
    payload = {
        "appid": plate.appid,
        "openid": plate.openid,
        "plate_number": session.plate_number,
        "plate_color": session.plate_color or plate.plate_color,
        "car_park_id": session.car_park_id,
        "time": session.entered_at.isoformat(),
    }
    await wechat_calls.enqueue(conn, session.mall_id, session.session_id, "state_in", payload)
    await wechat_calls.enqueue(
        conn, session.mall_id, session.session_id, "pay_score_entry", payload
    )


@dataclass(frozen=True)
class ExitQuery:
    mall_id: str
    car_park_id: str
    plate_number: str
    color: Color | None
    exit_at: datetime
    gate_id: str = ""


@dataclass(frozen=True)
class Quoted:
    session: Session
    quote: QuoteRow

    @property
    def gate_may_open(self) -> bool:
        return self.quote.payable_fen == 0 or self.session.pay_score


def day_start(at: datetime, tz: ZoneInfo) -> datetime:
    """Midnight (mall time zone) of the day ``at`` falls on."""
    return datetime.combine(at.astimezone(tz).date(), time(0), tzinfo=tz)


async def _session_at_exit(
    conn: Connection, query: ExitQuery, time_zone: str
) -> tuple[Session, MemberFacts | None]:
    """The open session of the plate with its member's (tier, spend); for a vehicle with no
    entry record, a session opened now."""
    found = await sessions.find_open_with_facts(
        conn,
        query.mall_id,
        query.car_park_id,
        query.plate_number,
        time_zone=time_zone,
        until=query.exit_at,
    )
    if found is not None:
        return found
    return await _open_at_exit(conn, query), None


async def _open_at_exit(conn: Connection, query: ExitQuery) -> Session:
    async with conn.transaction():
        plate = await plates.find(conn, query.mall_id, query.plate_number)
        session = Session(
            mall_id=query.mall_id,
            session_id=str(uuid.uuid4()),
            car_park_id=query.car_park_id,
            plate_number=query.plate_number,
            plate_color=query.color.value if query.color else "",
            member_id=plate.member_id if plate else None,
            status=Status.OPEN,
            entered_at=query.exit_at,
            entry_missing=True,
        )
        try:
            created = await sessions.insert(conn, session, entry_ref=None, entry_gate="")
        except asyncpg.UniqueViolationError:  # another gate opened it at the same moment
            created = None
        if created is None:
            raise Conflict("retry", "the vehicle's session changed meanwhile; quote again")
        await sessions.record_anomaly(
            conn,
            mall_id=query.mall_id,
            car_park_id=query.car_park_id,
            plate_number=query.plate_number,
            session_id=created.session_id,
            kind=AnomalyKind.EXIT_WITHOUT_ENTRY.value,
            detail=f"at exit gate {query.gate_id or '?'} with no entry record",
        )
        await add_events(conn, [session_started(created)])
        return created


async def _price(
    conn: Connection,
    config: ConfigCache,
    session: Session,
    exit_at: datetime,
    *,
    allow_points: bool,
    facts: MemberFacts | None = None,
) -> tuple[Priced, int, int, int]:
    """(priced stay, schedule version, parked minutes, quote validity in minutes)."""
    mall = await config.mall(conn, session.mall_id)
    tz, policy = mall.time_zone, mall.policy
    schedule = await config.schedule_at(
        conn, session.mall_id, session.car_park_id, session.entered_at
    )
    minutes = parked_minutes(session.entered_at, exit_at)
    version = schedule.version if schedule else 0
    if session.entry_missing:
        fee = schedule.missing_entry_fee_fen if schedule else 0
        return Priced(fee, ()), version, minutes, policy.quote_valid_minutes
    benefits: list[Benefit] = []
    use_points = False
    if session.member_id:
        known = facts or await members.facts(
            conn, session.mall_id, session.member_id, day_start(session.entered_at, tz), exit_at
        )
        tier = policy.tier_benefit(known.tier_code)
        spend = policy.spend_benefit(known.spend_fen)
        benefits = [b for b in (tier, spend) if b is not None]
        benefits += [
            Benefit(BenefitKind.COUPON, f"停车券 免费{minutes}分钟", minutes, coupon_id=coupon_id)
            for coupon_id, minutes in known.coupons
        ]
        if allow_points and policy.points_enabled:
            plate = await plates.find(conn, session.mall_id, session.plate_number)
            use_points = bool(
                plate and plate.member_id == session.member_id and plate.pay_with_points
            )
    priced = price(
        schedule, session.entered_at, exit_at, tz, benefits, policy=policy, use_points=use_points
    )
    return priced, version, minutes, policy.quote_valid_minutes


async def preview(
    conn: Connection, config: ConfigCache, session: Session, at: datetime
) -> tuple[Priced, int, int]:
    """What leaving at ``at`` would cost, points not used (nothing is held or stored)."""
    priced, version, minutes, _ = await _price(conn, config, session, at, allow_points=False)
    return priced, version, minutes


async def quote_exit(
    pool: asyncpg.Pool, config: ConfigCache, points: PointsPort | None, query: ExitQuery
) -> tuple[Quoted, bool]:
    """The quote, and whether an earlier quote's points hold is now to be released."""
    async with pool.acquire() as conn:
        mall = await config.mall(conn, query.mall_id)
        session, facts = await _session_at_exit(conn, query, mall.time_zone.key)
        priced, version, minutes, valid_minutes = await _price(
            conn, config, session, query.exit_at, allow_points=points is not None, facts=facts
        )
        quote_id = str(uuid.uuid4())
        hold_id: str | None = None
        if priced.points and points is not None and session.member_id:
            try:
                hold_id = await points.hold(
                    session.mall_id,
                    session.member_id,
                    priced.points,
                    reward_ref=session.session_id,
                    request_id=f"parking-quote:{quote_id}",
                )
            except AppError as exc:  # too few points: quote what benefits cover
                log.info("points_hold_refused", code=exc.code, session_id=session.session_id)
            except Exception as exc:  # points unreachable: never hold the gate for it
                log.warning("points_unavailable", error=repr(exc), session_id=session.session_id)
            if hold_id is None:
                priced = priced.without_points()
        quote, superseded = await sessions.insert_quote(
            conn,
            session=session,
            quoted_at=query.exit_at,
            valid_until=query.exit_at + timedelta(minutes=valid_minutes),
            parked_minutes=minutes,
            priced=priced,
            schedule_version=version,
            hold_id=hold_id,
            quote_id=quote_id,
        )
        return Quoted(session, quote), superseded > 0


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
        quote = await sessions.get_quote(conn, s.mall_id, s.quote_id, lock=True)
        if quote is None or quote.session_id != session.session_id:
            raise NotFound("quote_not_found", f"no quote {s.quote_id} for this session")
        if s.exited_at > quote.valid_until or quote.hold_state in ("release", "released"):
            raise Conflict("quote_expired", "the quote is no longer valid; quote again")
        if s.method == PaymentMethod.PAY_SCORE and not session.pay_score:
            raise Conflict("pay_score_not_enabled", "this vehicle is not in pay-score parking")
        if s.method == PaymentMethod.POINTS and quote.hold_points == 0:
            raise Conflict("no_points_on_quote", "the quote does not use points")
        coupon_ids = [b["coupon_id"] for b in quote.benefits if b["kind"] == "coupon"]
        if await coupons.use(conn, s.mall_id, coupon_ids, s.session_id, s.exited_at) != len(
            coupon_ids
        ):
            raise Conflict("coupon_used", "a coupon on the quote was used meanwhile; quote again")
        settled = await sessions.settle(
            conn,
            s.mall_id,
            s.session_id,
            exited_at=s.exited_at,
            exit_gate=s.gate_id,
            quote=quote,
            paid_fen=s.paid_fen,
            method=s.method,
        )
        holds = await sessions.decide_holds(
            conn, s.mall_id, s.session_id, keep_quote_id=s.quote_id, confirm=True
        )
        problem = settlement_anomaly(s.method, quote.payable_fen, s.paid_fen)
        if problem:
            await sessions.record_anomaly(
                conn,
                mall_id=s.mall_id,
                car_park_id=s.car_park_id,
                plate_number=session.plate_number,
                session_id=session.session_id,
                kind=AnomalyKind.UNDERPAID.value,
                detail=problem,
            )
        await add_events(conn, [session_settled(settled, quote.benefits)])
        await _queue_exit_calls(conn, settled, quote)
        return settled, holds > 0


async def _queue_exit_calls(conn: Connection, session: Session, quote: QuoteRow) -> None:
    plate = (
        await plates.find(conn, session.mall_id, session.plate_number)
        if session.member_id
        else None  # a visitor: nobody to tell
    )
    assert session.exited_at is not None
    if plate is not None and plate.openid and plate.member_id == session.member_id:
        await wechat_calls.enqueue(
            conn,
            session.mall_id,
            session.session_id,
            "state_out",
            {
                "appid": plate.appid,
                "openid": plate.openid,
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
