"""SQL for parking sessions: entry, the open stay of a plate, settlement."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kit.db import Connection

from parking.adapters.members import FACTS_SQL, MemberFacts, facts_from
from parking.adapters.plates import PlateRow
from parking.adapters.quotes import QuoteRow
from parking.domain.sessions import PaymentMethod, Session, Status

_COLUMNS = """mall_id, session_id::text, car_park_id, plate_number, plate_color, member_id,
    status, entered_at, entry_missing, pay_score, exited_at, gross_fee_fen, discount_fen,
    paid_fen, payment_method, settled_quote_id::text, prepaid_quote_id::text, prepaid_at,
    prepaid_until"""


_S_COLUMNS = ", ".join(f"s.{c.strip()}" for c in _COLUMNS.split(","))


def _session(row: Any) -> Session:
    fields = dict(row)
    fields["status"] = Status(fields["status"])
    fields["payment_method"] = (
        PaymentMethod(fields["payment_method"]) if fields["payment_method"] else None
    )
    return Session(**fields)


async def find_by_ref(
    conn: Connection, mall_id: str, car_park_id: str, entry_ref: str
) -> Session | None:
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM sessions
             WHERE mall_id = $1 AND car_park_id = $2 AND entry_ref = $3""",
        mall_id,
        car_park_id,
        entry_ref,
    )
    return _session(row) if row else None


@dataclass(frozen=True)
class EntryContext:
    """What an entry needs to know, read in one round trip without locks."""

    known_session_id: str | None
    inside_session_id: str | None
    plate: PlateRow | None


async def entry_context(
    conn: Connection, mall_id: str, car_park_id: str, entry_ref: str, plate_number: str
) -> EntryContext:
    row = await conn.fetchrow(
        """SELECT k.session_id::text AS known, i.session_id::text AS inside,
                  p.member_id, p.plate_color, p.pay_with_points, p.appid, p.openid, p.bound_at
             FROM (SELECT 1) AS one
             LEFT JOIN sessions k
                    ON k.mall_id = $1 AND k.car_park_id = $2 AND k.entry_ref = $3
             LEFT JOIN sessions i
                    ON i.mall_id = $1 AND i.car_park_id = $2 AND i.plate_number = $4
                   AND i.status = 'open'
             LEFT JOIN plates p ON p.mall_id = $1 AND p.plate_number = $4""",
        mall_id,
        car_park_id,
        entry_ref,
        plate_number,
    )
    assert row is not None
    plate = None
    if row["member_id"] is not None:
        plate = PlateRow(
            mall_id,
            plate_number,
            row["member_id"],
            row["plate_color"],
            row["pay_with_points"],
            row["appid"],
            row["openid"],
            row["bound_at"],
        )
    return EntryContext(row["known"], row["inside"], plate)


async def find_open(
    conn: Connection, mall_id: str, car_park_id: str, plate_number: str, *, lock: bool = False
) -> Session | None:
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM sessions
             WHERE mall_id = $1 AND car_park_id = $2 AND plate_number = $3 AND status = 'open'"""
        + (" FOR UPDATE" if lock else ""),
        mall_id,
        car_park_id,
        plate_number,
    )
    return _session(row) if row else None


async def find_open_with_facts(
    conn: Connection,
    mall_id: str,
    car_park_id: str,
    plate_number: str,
    *,
    time_zone: str,
    until: datetime,
) -> tuple[Session, MemberFacts | None] | None:
    """The plate's open session with its member's facts (tier, spend from the start of the
    entry day in the mall's time zone to ``until``, usable coupons): all a quote reads, in one
    round trip."""
    facts_sql = FACTS_SQL.format(
        member="s.member_id",
        since="(date_trunc('day', s.entered_at AT TIME ZONE $4) AT TIME ZONE $4)",
        until="$5",
    )
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS}, {facts_sql}
              FROM sessions s
             WHERE s.mall_id = $1 AND s.car_park_id = $2 AND s.plate_number = $3
               AND s.status = 'open'""",
        mall_id,
        car_park_id,
        plate_number,
        time_zone,
        until,
    )
    if row is None:
        return None
    fields = dict(row)
    member_facts = facts_from(fields) if fields["member_id"] else None
    for key in ("_tier", "_spent", "_coupons"):
        fields.pop(key)
    return _session(fields), member_facts


async def find_open_for_plates(
    conn: Connection, mall_id: str, plate_numbers: list[str]
) -> Session | None:
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM sessions
             WHERE mall_id = $1 AND plate_number = ANY($2::text[]) AND status = 'open'
             ORDER BY entered_at DESC LIMIT 1""",
        mall_id,
        plate_numbers,
    )
    return _session(row) if row else None


async def get(
    conn: Connection, mall_id: str, session_id: str, *, lock: bool = False
) -> Session | None:
    try:
        uuid.UUID(session_id)
    except ValueError:
        return None
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM sessions WHERE mall_id = $1 AND session_id = $2::uuid"
        + (" FOR UPDATE" if lock else ""),
        mall_id,
        session_id,
    )
    return _session(row) if row else None


async def insert(
    conn: Connection,
    session: Session,
    *,
    entry_ref: str | None,
    entry_gate: str,
) -> Session | None:
    """None when the entry_ref was recorded meanwhile (a concurrent resend)."""
    row = await conn.fetchrow(
        f"""INSERT INTO sessions (mall_id, session_id, car_park_id, plate_number, plate_color,
                member_id, status, entered_at, entry_ref, entry_gate, entry_missing, pay_score)
            VALUES ($1, $2::uuid, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            ON CONFLICT (mall_id, car_park_id, entry_ref) DO NOTHING
            RETURNING {_COLUMNS}""",
        session.mall_id,
        session.session_id,
        session.car_park_id,
        session.plate_number,
        session.plate_color,
        session.member_id,
        session.status.value,
        session.entered_at,
        entry_ref,
        entry_gate,
        session.entry_missing,
        session.pay_score,
    )
    return _session(row) if row else None


async def abandon(conn: Connection, mall_id: str, session_id: str) -> None:
    await conn.execute(
        """UPDATE sessions SET status = 'abandoned'
            WHERE mall_id = $1 AND session_id = $2::uuid AND status = 'open'""",
        mall_id,
        session_id,
    )


@dataclass(frozen=True)
class Settled:
    session: Session
    #: Held quotes of the session now decided: the settled one's hold to confirm, others'
    #: to release.
    holds_decided: int
    #: The WeChat identity of the member's binding of this plate, if the shopper linked it.
    appid: str
    openid: str


async def settle(
    conn: Connection,
    mall_id: str,
    session_id: str,
    *,
    exited_at: datetime,
    exit_gate: str,
    quote: QuoteRow,
    paid_fen: int,
    method: PaymentMethod,
) -> Settled:
    """Settle the session on ``quote`` and decide its points holds, in one statement that
    also reads the member's binding of the plate (for the WeChat calls after the exit)."""
    row = await conn.fetchrow(
        f"""WITH holds AS (
                UPDATE quotes
                   SET hold_state = CASE WHEN quote_id = $10::uuid THEN 'confirm'
                                         ELSE 'release' END,
                       hold_next_at = now()
                 WHERE mall_id = $1 AND session_id = $2::uuid AND hold_state = 'held'
                RETURNING 1
            ), s AS (
                UPDATE sessions
                   SET status = 'settled', exited_at = $3, exit_gate = $4, gross_fee_fen = $5,
                       discount_fen = $6, paid_fen = $7, payment_method = $8,
                       benefits = $9::jsonb, settled_quote_id = $10::uuid
                 WHERE mall_id = $1 AND session_id = $2::uuid
                RETURNING *
            )
            SELECT {_S_COLUMNS}, (SELECT count(*) FROM holds) AS _holds,
                   coalesce(p.appid, '') AS _appid, coalesce(p.openid, '') AS _openid
              FROM s LEFT JOIN plates p
                ON p.mall_id = s.mall_id AND p.plate_number = s.plate_number
               AND p.member_id = s.member_id""",
        mall_id,
        session_id,
        exited_at,
        exit_gate,
        quote.gross_fee_fen,
        quote.discount_fen,
        paid_fen,
        method.value,
        json.dumps(quote.benefits),
        quote.quote_id,
    )
    assert row is not None
    fields = dict(row)
    holds, appid, openid = fields.pop("_holds"), fields.pop("_appid"), fields.pop("_openid")
    return Settled(_session(fields), int(holds), appid, openid)


async def session_benefits(conn: Connection, mall_id: str, session_id: str) -> list[dict[str, Any]]:
    raw = await conn.fetchval(
        "SELECT benefits FROM sessions WHERE mall_id = $1 AND session_id = $2::uuid",
        mall_id,
        session_id,
    )
    return list(json.loads(raw)) if raw else []


async def prepay(
    conn: Connection,
    mall_id: str,
    session_id: str,
    *,
    quote_id: str,
    request_id: str,
    at: datetime,
    until: datetime,
) -> Session:
    """Record the member's settlement before leaving and decide the session's points holds
    (the quote's confirmed, any other released), in one statement. Every other quote of the
    session is void from now on (as released): an exit gate still holding one made before the
    settlement must quote again, and then sees the stay as settled."""
    row = await conn.fetchrow(
        f"""WITH holds AS (
                UPDATE quotes
                   SET hold_state = CASE WHEN quote_id = $3::uuid THEN 'confirm'
                                         WHEN hold_state = 'held' THEN 'release'
                                         ELSE 'released' END,
                       hold_next_at = now()
                 WHERE mall_id = $1 AND session_id = $2::uuid
                   AND (hold_state = 'held' OR (hold_state = 'none' AND quote_id <> $3::uuid))
                RETURNING 1
            )
            UPDATE sessions
               SET prepaid_quote_id = $3::uuid, prepay_request_id = $4, prepaid_at = $5,
                   prepaid_until = $6
             WHERE mall_id = $1 AND session_id = $2::uuid AND status = 'open'
            RETURNING {_COLUMNS}""",
        mall_id,
        session_id,
        quote_id,
        request_id,
        at,
        until,
    )
    assert row is not None
    return _session(row)


async def prepay_request_id(conn: Connection, mall_id: str, session_id: str) -> str:
    return str(
        await conn.fetchval(
            "SELECT prepay_request_id FROM sessions WHERE mall_id = $1 AND session_id = $2::uuid",
            mall_id,
            session_id,
        )
        or ""
    )
