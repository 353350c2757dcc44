"""SQL for lots of points: filled by credits, spent oldest-expiring first, expired by the job.

Callers hold the member's account lock (``repository.lock_accounts``) for every change.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kit.db import Connection


@dataclass(frozen=True)
class NewLot:
    mall_id: str
    member_id: str
    #: The payment whose credit entry fills the lot.
    transaction_id: str
    points: int
    expires_at: datetime


@dataclass(frozen=True)
class ExpiredLot:
    mall_id: str
    member_id: str
    lot_id: str
    points: int


@dataclass(frozen=True)
class ExpiringLot:
    mall_id: str
    member_id: str
    lot_id: str
    points: int
    expires_at: datetime


async def mark_reminders(
    conn: Connection, now: datetime, until: datetime, limit: int
) -> list[ExpiringLot]:
    """Stamp up to ``limit`` open lots expiring in (now, until] that were not reminded yet,
    skipping lots another transaction holds (a parallel run, or a debit: next time); return
    them. No account lock: only ``reminded_at`` changes."""
    rows = await conn.fetch(
        """WITH due AS (
               SELECT mall_id, lot_id FROM lots
                WHERE reminded_at IS NULL AND points_remaining > 0
                  AND expires_at > $1 AND expires_at <= $2
                ORDER BY expires_at, mall_id, lot_id
                LIMIT $3
                  FOR UPDATE SKIP LOCKED)
           UPDATE lots l SET reminded_at = now()
             FROM due WHERE l.mall_id = due.mall_id AND l.lot_id = due.lot_id
                        AND l.reminded_at IS NULL
           RETURNING l.mall_id, l.member_id, l.lot_id, l.points_remaining, l.expires_at""",
        now,
        until,
        limit,
    )
    found = [
        ExpiringLot(
            r["mall_id"],
            str(r["member_id"]),
            str(r["lot_id"]),
            r["points_remaining"],
            r["expires_at"],
        )
        for r in rows
    ]
    return sorted(found, key=lambda lot: (lot.expires_at, lot.mall_id, lot.lot_id))


async def add(conn: Connection, lots: Sequence[NewLot]) -> None:
    """One lot per credit entry, in one statement."""
    if not lots:
        return
    await conn.execute(
        """INSERT INTO lots (mall_id, lot_id, member_id, source_entry_id, points_initial,
                             points_remaining, expires_at)
           SELECT t.m, gen_random_uuid(), t.u, l.entry_id, t.p, t.p, t.e
             FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bigint[], $5::timestamptz[])
                  AS t(m, u, x, p, e)
            CROSS JOIN LATERAL (  -- one index probe per credit, whatever the ledger's size
                  SELECT entry_id FROM ledger
                   WHERE mall_id = t.m AND transaction_id = t.x AND kind = 'credit'
                   LIMIT 1) AS l""",
        [lot.mall_id for lot in lots],
        [uuid.UUID(lot.member_id) for lot in lots],
        [lot.transaction_id for lot in lots],
        [lot.points for lot in lots],
        [lot.expires_at for lot in lots],
    )


async def consume(conn: Connection, mall_id: str, member_id: str, points: int) -> int:
    """Take ``points`` from the member's lots, the one expiring first first; return how many
    were taken. Lots running short (the balance went below zero) is not an error: what there
    is is taken, and the debit stands."""
    if points <= 0:
        return 0
    taken = await conn.fetchval(
        """WITH open AS (
               SELECT lot_id, points_remaining,
                      sum(points_remaining) OVER (ORDER BY expires_at, created_at, lot_id)
                        - points_remaining AS before
                 FROM lots
                WHERE mall_id = $1 AND member_id = $2 AND points_remaining > 0),
           take AS (
               SELECT lot_id, least(points_remaining, $3 - before) AS n
                 FROM open WHERE before < $3),
           spent AS (
               UPDATE lots l SET points_remaining = l.points_remaining - take.n
                 FROM take WHERE l.mall_id = $1 AND l.lot_id = take.lot_id
               RETURNING take.n)
           SELECT coalesce(sum(n), 0) FROM spent""",
        mall_id,
        uuid.UUID(member_id),
        points,
    )
    return int(taken)


async def lock_due_accounts(
    conn: Connection, now: datetime, limit: int
) -> dict[tuple[str, str], int]:
    """Lock up to ``limit`` accounts that have due lots, skipping accounts another
    transaction holds (a parallel expiry run, or a debit that will be seen next time);
    return their balances."""
    rows = await conn.fetch(
        """SELECT a.mall_id, a.member_id, a.balance
             FROM accounts a
            WHERE (a.mall_id, a.member_id) IN (
                      SELECT DISTINCT mall_id, member_id FROM lots
                       WHERE expires_at <= $1 AND points_remaining > 0)
            ORDER BY a.mall_id, a.member_id
            LIMIT $2
              FOR UPDATE SKIP LOCKED""",
        now,
        limit,
    )
    return {(r["mall_id"], str(r["member_id"])): r["balance"] for r in rows}


async def expire(
    conn: Connection, accounts: Sequence[tuple[str, str]], now: datetime
) -> list[ExpiredLot]:
    """Zero the due lots of locked accounts; return what each lot lost."""
    if not accounts:
        return []
    rows = await conn.fetch(
        """WITH due AS (
               SELECT l.mall_id, l.lot_id, l.points_remaining
                 FROM lots l
                 JOIN unnest($1::text[], $2::uuid[]) AS t(m, u)
                   ON l.mall_id = t.m AND l.member_id = t.u
                WHERE l.expires_at <= $3 AND l.points_remaining > 0
                  FOR UPDATE OF l SKIP LOCKED)
           UPDATE lots l SET points_remaining = 0, expired_at = now()
             FROM due WHERE l.mall_id = due.mall_id AND l.lot_id = due.lot_id
           RETURNING l.mall_id, l.member_id, l.lot_id, due.points_remaining AS points""",
        [a[0] for a in accounts],
        [uuid.UUID(a[1]) for a in accounts],
        now,
    )
    found = [
        ExpiredLot(r["mall_id"], str(r["member_id"]), str(r["lot_id"]), r["points"]) for r in rows
    ]
    return sorted(found, key=lambda lot: (lot.mall_id, lot.member_id, lot.lot_id))


async def append_expiries(conn: Connection, totals: dict[tuple[str, str], tuple[int, int]]) -> None:
    """One 'expiry' entry per member ((points expired, balance after)) and the balances."""
    if not totals:
        return
    keys = list(totals)
    await conn.execute(
        """WITH entry AS (
               INSERT INTO ledger (mall_id, member_id, kind, points, balance_after,
                                   description)
               SELECT m, u, 'expiry', -p, b, 'points expired'
                 FROM unnest($1::text[], $2::uuid[], $3::bigint[], $4::bigint[])
                      AS t(m, u, p, b))
           UPDATE accounts a SET balance = t.b, updated_at = now()
             FROM unnest($1::text[], $2::uuid[], $4::bigint[]) AS t(m, u, b)
            WHERE a.mall_id = t.m AND a.member_id = t.u""",
        [k[0] for k in keys],
        [uuid.UUID(k[1]) for k in keys],
        [totals[k][0] for k in keys],
        [totals[k][1] for k in keys],
    )
