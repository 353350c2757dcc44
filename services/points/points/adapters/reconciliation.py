"""SQL for the points reconciliation: a day's movements and the ledger-balance proof."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kit.db import Connection


@dataclass(frozen=True)
class DayTotals:
    payments_credited: int
    points_credited: int
    points_reversed: int
    points_redeemed: int
    points_expired: int
    points_adjusted: int
    sync_succeeded: int
    sync_pending: int
    sync_failed: int


async def day_totals(conn: Connection, mall_id: str, start: datetime, end: datetime) -> DayTotals:
    ledger = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE kind = 'credit') AS payments_credited,
                  coalesce(sum(points) FILTER (WHERE kind = 'credit'), 0) AS credited,
                  coalesce(-sum(points) FILTER (WHERE kind = 'reversal'), 0) AS reversed,
                  coalesce(-sum(points) FILTER (WHERE kind = 'redemption'), 0) AS redeemed,
                  coalesce(-sum(points) FILTER (WHERE kind = 'expiry'), 0) AS expired,
                  coalesce(sum(points) FILTER (WHERE kind = 'adjustment'), 0) AS adjusted
             FROM ledger WHERE mall_id = $1 AND created_at >= $2 AND created_at < $3""",
        mall_id,
        start,
        end,
    )
    sync = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE state = 'SENT') AS sent,
                  count(*) FILTER (WHERE state = 'PENDING') AS pending,
                  count(*) FILTER (WHERE state = 'FAILED') AS failed
             FROM wechat_points_sync
            WHERE mall_id = $1 AND created_at >= $2 AND created_at < $3""",
        mall_id,
        start,
        end,
    )
    assert ledger is not None
    assert sync is not None
    return DayTotals(
        payments_credited=int(ledger["payments_credited"]),
        points_credited=int(ledger["credited"]),
        points_reversed=int(ledger["reversed"]),
        points_redeemed=int(ledger["redeemed"]),
        points_expired=int(ledger["expired"]),
        points_adjusted=int(ledger["adjusted"]),
        sync_succeeded=int(sync["sent"]),
        sync_pending=int(sync["pending"]),
        sync_failed=int(sync["failed"]),
    )


async def unbalanced_accounts(conn: Connection, mall_id: str) -> tuple[int, list[str]]:
    """(accounts checked, members whose balance is not the sum of their ledger entries)."""
    rows = await conn.fetch(
        """SELECT a.member_id, a.balance = coalesce(l.total, 0) AS sound
             FROM accounts a
             LEFT JOIN (SELECT member_id, sum(points) AS total FROM ledger
                         WHERE mall_id = $1 GROUP BY member_id) l USING (member_id)
            WHERE a.mall_id = $1""",
        mall_id,
    )
    return len(rows), sorted(str(r["member_id"]) for r in rows if not r["sound"])
