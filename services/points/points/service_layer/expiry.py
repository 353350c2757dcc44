"""Expire due lots of points: one 'expiry' entry per member, one event per lot; and remind
of lots about to expire: one ``points.points.expiring`` event per lot, once.

Safe to run twice at once and on several replicas: a batch locks the accounts it works on
with SKIP LOCKED (another run takes others, or finds nothing left), zeroes their due lots and
commits the entries, balances and events together, so each lot expires exactly once. The
reminder stamps ``reminded_at`` on the lots it takes (SKIP LOCKED too) in the transaction that
adds their events, so each lot is reminded exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from eventbus.outbox import add_events
from kit.db import Connection

from points.adapters import events, lots, policies
from points.domain.debt import split_debit

DEFAULT_BATCH = 500
#: pg_try_advisory_xact_lock key of the periodic job: one replica works, the others skip.
EXPIRY_LOCK = "points.expire-points"
#: Days before a lot expires that its reminder goes out (setting EXPIRY_REMINDER_DAYS).
DEFAULT_REMINDER_DAYS = 30


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
        lost: dict[tuple[str, str], int] = {}
        for lot in expired:
            key = (lot.mall_id, lot.member_id)
            lost[key] = lost.get(key, 0) + lot.points
        by_mall = await policies.negative_balance(conn, [m for m, _ in lost])
        totals: dict[tuple[str, str], tuple[int, int]] = {}
        owed: dict[tuple[str, str], int] = {}
        for key, points in lost.items():
            debit = split_debit(by_mall[key[0]], balances[key], points)
            totals[key] = (debit.taken, balances[key] - debit.taken)
            owed[key] = debit.debt
        await lots.append_expiries(conn, totals)
        await policies.add_debts(conn, owed)
        await add_events(
            conn,
            [
                events.points_expired(lot, balance_after=totals[(lot.mall_id, lot.member_id)][1])
                for lot in expired
            ],
        )
    return ExpiryRun(len(totals), len(expired), sum(lost.values()))


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


async def remind_due(
    conn: Connection, now: datetime, days: int = DEFAULT_REMINDER_DAYS, limit: int = DEFAULT_BATCH
) -> int:
    """One batch, in one transaction: remind of up to ``limit`` lots expiring within ``days``
    of ``now`` (not yet expired, not reminded before); return how many."""
    async with conn.transaction():
        due = await lots.mark_reminders(conn, now, now + timedelta(days=days), limit)
        await add_events(conn, [events.points_expiring(lot) for lot in due])
    return len(due)


async def remind_all(
    conn: Connection,
    now: datetime,
    days: int = DEFAULT_REMINDER_DAYS,
    limit: int = DEFAULT_BATCH,
    *,
    exclusive: bool = False,
) -> int | None:
    """Batches until none is full; ``exclusive`` as for ``expire_all`` (same lock)."""
    reminded = 0
    while True:
        async with conn.transaction():
            if exclusive and not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", EXPIRY_LOCK
            ):
                return reminded or None
            batch = await remind_due(conn, now, days, limit)
        reminded += batch
        if batch < limit:
            return reminded
