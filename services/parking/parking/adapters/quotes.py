"""SQL for exit quotes and the points held for them."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kit.db import Connection

from parking.domain.benefits import Applied, Benefit, BenefitKind, Priced
from parking.domain.sessions import Session


def benefit_lines(applied: tuple[Applied, ...]) -> list[dict[str, Any]]:
    return [
        {
            "kind": a.benefit.kind.value,
            "description": a.benefit.description,
            "free_minutes": a.benefit.free_minutes,
            "discount_fen": a.discount_fen,
            "points": a.benefit.points,
            "coupon_id": a.benefit.coupon_id,
        }
        for a in applied
    ]


def benefit_of(line: dict[str, Any]) -> Benefit:
    """A stored benefit line back as the benefit it was."""
    return Benefit(
        BenefitKind(line["kind"]),
        str(line["description"]),
        int(line["free_minutes"]),
        points=int(line.get("points") or 0),
        coupon_id=str(line.get("coupon_id") or ""),
    )


@dataclass(frozen=True)
class QuoteRow:
    mall_id: str
    quote_id: str
    session_id: str
    member_id: str | None
    quoted_at: datetime
    valid_until: datetime
    parked_minutes: int
    gross_fee_fen: int
    discount_fen: int
    payable_fen: int
    benefits: list[dict[str, Any]]
    schedule_version: int
    hold_id: str | None
    hold_points: int
    hold_state: str

    @property
    def points_minutes(self) -> int:
        return sum(
            int(b["free_minutes"]) for b in self.benefits if b["kind"] == BenefitKind.POINTS.value
        )


_QUOTE_COLUMNS = """mall_id, quote_id::text, session_id::text, member_id, quoted_at, valid_until,
    parked_minutes, gross_fee_fen, discount_fen, payable_fen, benefits, schedule_version,
    hold_id, hold_points, hold_state"""


def _quote(row: Any) -> QuoteRow:
    fields = dict(row)
    fields["benefits"] = json.loads(fields["benefits"])
    return QuoteRow(**fields)


async def insert_quote(
    conn: Connection,
    *,
    session: Session,
    quoted_at: datetime,
    valid_until: datetime,
    parked_minutes: int,
    priced: Priced,
    schedule_version: int,
    hold_id: str | None,
    quote_id: str | None = None,
) -> tuple[QuoteRow, int]:
    """Store a quote and, in the same statement, mark every other held quote of the session
    for release (a newer quote replaces them); returns the quote and how many were marked."""
    row = await conn.fetchrow(
        f"""WITH superseded AS (
                UPDATE quotes SET hold_state = 'release', hold_next_at = now()
                 WHERE mall_id = $1 AND session_id = $3::uuid AND hold_state = 'held'
                RETURNING 1
            ), created AS (
                INSERT INTO quotes (mall_id, quote_id, session_id, member_id, quoted_at,
                    valid_until, parked_minutes, gross_fee_fen, discount_fen, payable_fen,
                    benefits, schedule_version, hold_id, hold_points, hold_state, hold_next_at)
                VALUES ($1, $2::uuid, $3::uuid, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12,
                        $13, $14, $15, $6)
                RETURNING {_QUOTE_COLUMNS}
            )
            SELECT created.*, (SELECT count(*) FROM superseded) AS superseded FROM created""",
        session.mall_id,
        quote_id or str(uuid.uuid4()),
        session.session_id,
        session.member_id,
        quoted_at,
        valid_until,
        parked_minutes,
        priced.gross_fen,
        priced.discount_fen,
        priced.payable_fen,
        json.dumps(benefit_lines(priced.applied)),
        schedule_version,
        hold_id,
        priced.points if hold_id else 0,
        "held" if hold_id else "none",
    )
    assert row is not None
    fields = dict(row)
    superseded = int(fields.pop("superseded"))
    return _quote(fields), superseded


async def get_quote(
    conn: Connection, mall_id: str, quote_id: str, *, lock: bool = False
) -> QuoteRow | None:
    try:
        uuid.UUID(quote_id)
    except ValueError:
        return None
    row = await conn.fetchrow(
        f"SELECT {_QUOTE_COLUMNS} FROM quotes WHERE mall_id = $1 AND quote_id = $2::uuid"
        + (" FOR UPDATE" if lock else ""),
        mall_id,
        quote_id,
    )
    return _quote(row) if row else None


async def decide_holds(
    conn: Connection, mall_id: str, session_id: str, *, keep_quote_id: str | None, confirm: bool
) -> int:
    """Points held for a session's quotes: the kept quote's hold is confirmed (``confirm``) or
    left held; every other held quote's hold is to be released. The worker makes the calls.
    Returns how many held quotes were looked at."""
    result = await conn.execute(
        """UPDATE quotes
              SET hold_state = CASE WHEN quote_id = $3::uuid THEN
                                   CASE WHEN $4 THEN 'confirm' ELSE 'held' END
                               ELSE 'release' END,
                  hold_next_at = now()
            WHERE mall_id = $1 AND session_id = $2::uuid AND hold_state = 'held'""",
        mall_id,
        session_id,
        keep_quote_id,
        confirm,
    )
    return int(result.rsplit(" ", 1)[-1])


async def supersede_holds(conn: Connection, mall_id: str, session_id: str) -> list[tuple[str, str]]:
    """Mark the session's held quotes for release; their (quote_id, hold_id)."""
    rows = await conn.fetch(
        """UPDATE quotes SET hold_state = 'release', hold_next_at = now()
            WHERE mall_id = $1 AND session_id = $2::uuid AND hold_state = 'held'
           RETURNING quote_id::text, hold_id""",
        mall_id,
        session_id,
    )
    return [(r["quote_id"], r["hold_id"]) for r in rows]


async def mark_released(conn: Connection, mall_id: str, quote_id: str) -> None:
    await conn.execute(
        """UPDATE quotes SET hold_state = 'released', hold_attempts = hold_attempts + 1
            WHERE mall_id = $1 AND quote_id = $2::uuid AND hold_state = 'release'""",
        mall_id,
        quote_id,
    )
