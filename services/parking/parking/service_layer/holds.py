"""Points held at exit quotes: confirmed when the car leaves on the quote, released when it
leaves on another quote, enters again, or has not left by the quote's deadline.

The decisions are rows (quotes.hold_state 'confirm' / 'release'), written with the gate's
transaction; this job makes the calls to points, right after the gate call and then again with
growing delays until points answers, on any number of replicas (rows are leased).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog
from kit.errors import AppError

from parking.service_layer.ports import PointsPort

log = structlog.get_logger(__name__)

LEASE_S = 30.0
MAX_RETRY_S = 300.0


@dataclass(frozen=True)
class HoldRun:
    expired: int = 0
    confirmed: int = 0
    released: int = 0
    failed: int = 0
    retrying: int = 0


async def settle_holds(
    pool: asyncpg.Pool,
    points: PointsPort,
    now: datetime,
    *,
    mall_id: str | None = None,
    session_id: str | None = None,
    limit: int = 100,
) -> HoldRun:
    """Expire held quotes past their deadline, then confirm or release what is decided.
    ``session_id`` narrows it to one session (right after a gate call)."""
    async with pool.acquire() as conn:
        expired = await conn.execute(
            """UPDATE quotes SET hold_state = 'release', hold_next_at = $1
                WHERE hold_state = 'held' AND valid_until < $1""",
            now,
        )
        rows = await conn.fetch(
            """UPDATE quotes SET hold_next_at = $1 + make_interval(secs => $2)
                WHERE (mall_id, quote_id) IN (
                    SELECT mall_id, quote_id FROM quotes
                     WHERE hold_state IN ('confirm', 'release') AND hold_next_at <= $1
                       AND ($4::text IS NULL OR (mall_id = $4 AND session_id = $5::uuid))
                     ORDER BY hold_next_at LIMIT $3 FOR UPDATE SKIP LOCKED)
               RETURNING mall_id, quote_id::text, hold_id, hold_state, hold_attempts""",
            now,
            LEASE_S,
            limit,
            mall_id if session_id else None,
            session_id,
        )
    counts = {"confirmed": 0, "released": 0, "failed": 0, "retrying": 0}
    for row in rows:
        outcome, error = await _call(points, row)
        counts[outcome] += 1
        retry_s = min(MAX_RETRY_S, 2.0 ** row["hold_attempts"])
        async with pool.acquire() as conn:
            await conn.execute(
                """UPDATE quotes
                      SET hold_state = CASE WHEN $3 = 'retrying' THEN hold_state ELSE $3 END,
                          hold_attempts = hold_attempts + 1, hold_error = $4,
                          hold_next_at = now() + make_interval(secs => $5)
                    WHERE mall_id = $1 AND quote_id = $2::uuid""",
                row["mall_id"],
                row["quote_id"],
                outcome,
                error,
                retry_s,
            )
    return HoldRun(expired=int(expired.rsplit(" ", 1)[-1]), **counts)


async def _call(points: PointsPort, row: asyncpg.Record) -> tuple[str, str]:
    confirm = row["hold_state"] == "confirm"
    try:
        if confirm:
            await points.confirm(row["mall_id"], row["hold_id"])
        else:
            await points.release(row["mall_id"], row["hold_id"], "parking quote not used")
    except AppError as exc:
        log.error("points_hold_refused", quote_id=row["quote_id"], code=exc.code)
        return "failed", f"{exc.code}: {exc.message}"
    except Exception as exc:  # points away: keep the decision, try again later
        log.warning("points_hold_call_failed", quote_id=row["quote_id"], error=repr(exc))
        return "retrying", repr(exc)[:500]
    return ("confirmed" if confirm else "released"), ""
