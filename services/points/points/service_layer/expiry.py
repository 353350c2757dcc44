"""Expire due lots of points: one 'expiry' entry per member, one event per lot.

Safe to run twice at once and on several replicas: a batch locks the accounts it works on
with SKIP LOCKED (another run takes others, or finds nothing left), zeroes their due lots and
commits the entries, balances and events together, so each lot expires exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from eventbus.outbox import add_events
from kit.db import Connection

from points.adapters import events, lots

DEFAULT_BATCH = 500
#: pg_try_advisory_xact_lock key of the periodic job: one replica works, the others skip.
EXPIRY_LOCK = "points.expire-points"


@dataclass(frozen=True)
class ExpiryRun:
    members: int = 0
    lots: int = 0
    points: int = 0

    def __add__(self, other: ExpiryRun) -> ExpiryRun:
        return ExpiryRun(
            self.members + other.members, self.lots + other.lots, self.points + other.points
        )


async def expire_due(conn: Connection, now: datetime, limit: int = DEFAULT_BATCH) -> ExpiryRun:
    """One batch, in one transaction: up to ``limit`` members whose lots expired by ``now``."""
    async with conn.transaction():
        balances = await lots.lock_due_accounts(conn, now, limit)
        expired = await lots.expire(conn, list(balances), now)
        totals: dict[tuple[str, str], tuple[int, int]] = {}
        for lot in expired:
            key = (lot.mall_id, lot.member_id)
            points = totals.get(key, (0, 0))[0] + lot.points
            totals[key] = (points, balances[key] - points)
        await lots.append_expiries(conn, totals)
        await add_events(
            conn,
            [
                events.points_expired(lot, balance_after=totals[(lot.mall_id, lot.member_id)][1])
                for lot in expired
            ],
        )
    return ExpiryRun(len(totals), len(expired), sum(p for p, _ in totals.values()))


async def expire_all(
    conn: Connection, now: datetime, limit: int = DEFAULT_BATCH, *, exclusive: bool = False
) -> ExpiryRun | None:
    """Batches until none is full. ``exclusive``: each batch first takes the job's
    transaction-level advisory lock, and the run stops (None if at its first batch) when
    another replica holds it, so replicas do not even contend for rows."""
    run = ExpiryRun()
    while True:
        async with conn.transaction():
            if exclusive and not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", EXPIRY_LOCK
            ):
                return run if run.lots else None
            batch = await expire_due(conn, now, limit)
        run += batch
        if batch.members < limit:
            return run
