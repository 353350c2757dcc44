"""A vehicle at the exit gate: the quote, with member benefits, coupons and points."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import structlog
from eventbus.outbox import add_events
from kit.db import Connection
from kit.errors import AppError, Conflict

from parking.adapters import anomalies, members, plates, quotes, sessions
from parking.adapters.events import session_started
from parking.adapters.members import MemberFacts
from parking.adapters.quotes import QuoteRow, benefit_of
from parking.domain.benefits import Applied, Benefit, BenefitKind, Priced, price
from parking.domain.fees import FeeSchedule, parked_minutes
from parking.domain.plates import Color
from parking.domain.sessions import (
    AnomalyKind,
    Session,
    Status,
)
from parking.service_layer.config_cache import ConfigCache
from parking.service_layer.ports import PointsPort

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ExitQuery:
    mall_id: str
    car_park_id: str
    plate_number: str
    color: Color | None
    exit_at: datetime
    gate_id: str = ""


async def _release_earlier(conn: Connection, points: PointsPort, session: Session) -> None:
    for quote_id, hold_id in await quotes.supersede_holds(
        conn, session.mall_id, session.session_id
    ):
        try:
            await points.release(session.mall_id, hold_id, "a newer quote of the stay")
        except Exception as exc:  # the relay role's job releases it later
            log.warning("points_release_deferred", quote_id=quote_id, error=repr(exc))
            continue
        await quotes.mark_released(conn, session.mall_id, quote_id)


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
        await anomalies.record_anomaly(
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


async def price_session(
    conn: Connection,
    config: ConfigCache,
    session: Session,
    exit_at: datetime,
    *,
    allow_points: bool,
    facts: MemberFacts | None = None,
    points_wanted: bool | None = None,
) -> tuple[Priced, int, int, int]:
    """(priced stay, schedule version, parked minutes, quote validity in minutes).
    ``points_wanted`` overrides the plate's ``pay_with_points`` (the member asks)."""
    mall = await config.mall(conn, session.mall_id)
    tz, policy = mall.time_zone, mall.policy
    schedule = await config.schedule_at(
        conn, session.mall_id, session.car_park_id, session.entered_at
    )
    minutes = parked_minutes(session.entered_at, exit_at)
    version = schedule.version if schedule else 0
    if session.prepaid:
        priced = await _prepaid_price(conn, session, schedule, exit_at, tz)
        return priced, version, minutes, policy.quote_valid_minutes
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
        if allow_points and policy.points_enabled and points_wanted is not None:
            use_points = points_wanted
        elif allow_points and policy.points_enabled:
            plate = await plates.find(conn, session.mall_id, session.plate_number)
            use_points = bool(
                plate and plate.member_id == session.member_id and plate.pay_with_points
            )
    priced = price(
        schedule, session.entered_at, exit_at, tz, benefits, policy=policy, use_points=use_points
    )
    return priced, version, minutes, policy.quote_valid_minutes


async def _prepaid_price(
    conn: Connection,
    session: Session,
    schedule: FeeSchedule | None,
    exit_at: datetime,
    tz: ZoneInfo,
) -> Priced:
    """A stay the member settled before leaving: its quote as settled (nothing payable) up to
    the leave-by time; later, the whole stay priced again with the settled benefits (points
    hours included, not bought again), so the time after the settlement is charged."""
    assert session.prepaid_quote_id is not None
    assert session.prepaid_until is not None
    settled = await quotes.get_quote(conn, session.mall_id, session.prepaid_quote_id)
    assert settled is not None
    applied = tuple(Applied(benefit_of(b), int(b["discount_fen"])) for b in settled.benefits)
    if exit_at <= session.prepaid_until:
        return Priced(settled.gross_fee_fen, applied)
    return price(schedule, session.entered_at, exit_at, tz, [a.benefit for a in applied])


async def preview(
    conn: Connection, config: ConfigCache, session: Session, at: datetime
) -> tuple[Priced, int, int]:
    """What leaving at ``at`` would cost, points not used (nothing is held or stored)."""
    priced, version, minutes, _ = await price_session(conn, config, session, at, allow_points=False)
    return priced, version, minutes


async def quote_exit(
    pool: asyncpg.Pool, config: ConfigCache, points: PointsPort | None, query: ExitQuery
) -> tuple[Quoted, bool]:
    """The quote, and whether an earlier quote's points hold is now to be released."""
    async with pool.acquire() as conn:
        mall = await config.mall(conn, query.mall_id)
        session, facts = await _session_at_exit(conn, query, mall.time_zone.key)
        priced, version, minutes, valid_minutes = await price_session(
            conn, config, session, query.exit_at, allow_points=points is not None, facts=facts
        )
        return await store_quote(
            conn,
            points,
            session,
            priced,
            exit_at=query.exit_at,
            schedule_version=version,
            minutes=minutes,
            valid_minutes=valid_minutes,
        )


async def store_quote(
    conn: Connection,
    points: PointsPort | None,
    session: Session,
    priced: Priced,
    *,
    exit_at: datetime,
    schedule_version: int,
    minutes: int,
    valid_minutes: int,
    quote_id: str | None = None,
) -> tuple[Quoted, bool]:
    """Hold the points a priced stay uses (a prepaid stay's are spent already) and store the
    quote; with whether an earlier quote's hold is now to be released."""
    quote_id = quote_id or str(uuid.uuid4())
    hold_id: str | None = None
    if priced.points and points is not None and session.member_id and not session.prepaid:
        # Give back what an earlier quote of this stay holds first, so the member's points
        # are not needed twice for one stay.
        await _release_earlier(conn, points, session)
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
    quote, superseded = await quotes.insert_quote(
        conn,
        session=session,
        quoted_at=exit_at,
        valid_until=exit_at + timedelta(minutes=valid_minutes),
        parked_minutes=minutes,
        priced=priced,
        schedule_version=schedule_version,
        hold_id=hold_id,
        quote_id=quote_id,
    )
    return Quoted(session, quote), superseded > 0
