"""A vehicle at the entry gate: one session per entry, resends and missed exits handled."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog
from eventbus.outbox import add_events
from kit.db import Connection
from kit.errors import Conflict

from parking.adapters import anomalies, plates, quotes, sessions, wechat_calls
from parking.adapters.events import session_started
from parking.domain.plates import Color
from parking.domain.sessions import (
    AnomalyKind,
    Session,
    Status,
)

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


@dataclass(frozen=True)
class Entered:
    session: Session
    #: The entry had been recorded before (a gate resend).
    duplicate: bool = False
    #: The plate's earlier session, closed because its exit was missed (its points holds are
    #: to be released).
    abandoned_session_id: str | None = None


async def record_entry(conn: Connection, entry: Entry) -> Entered:
    """The session of this entry (the same one when a gate resends it)."""
    found = await sessions.entry_context(
        conn, entry.mall_id, entry.car_park_id, entry.entry_ref, entry.plate_number
    )
    if found.known_session_id is not None:
        return Entered(await _known(conn, entry), duplicate=True)
    plate = found.plate
    abandoned = None
    async with conn.transaction():
        if found.inside_session_id is not None:
            abandoned = await _close_missed_exit(conn, entry)
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
            return Entered(await _known(conn, entry), duplicate=True)
        await add_events(conn, [session_started(created)])
        if plate is not None and plate.openid:
            await _queue_entry_calls(conn, created, plate)
        return Entered(created, abandoned_session_id=abandoned)


async def _known(conn: Connection, entry: Entry) -> Session:
    known = await sessions.find_by_ref(conn, entry.mall_id, entry.car_park_id, entry.entry_ref)
    assert known is not None
    return known


async def _close_missed_exit(conn: Connection, entry: Entry) -> str | None:
    """The plate is still inside: the exit camera missed it. Close the old stay unpaid and
    keep it for the operator."""
    inside = await sessions.find_open(
        conn, entry.mall_id, entry.car_park_id, entry.plate_number, lock=True
    )
    if inside is None:
        return None
    await sessions.abandon(conn, entry.mall_id, inside.session_id)
    await quotes.decide_holds(
        conn, entry.mall_id, inside.session_id, keep_quote_id=None, confirm=False
    )
    await anomalies.record_anomaly(
        conn,
        mall_id=entry.mall_id,
        car_park_id=entry.car_park_id,
        plate_number=entry.plate_number,
        session_id=inside.session_id,
        kind=AnomalyKind.ENTRY_WHILE_INSIDE.value,
        detail=f"entered again at {entry.entered_at.isoformat()} without an exit since "
        f"{inside.entered_at.isoformat()}; the earlier session was closed unpaid",
    )
    return inside.session_id


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
