"""SQL of the coupon expiry job. Both statements pick their rows ``FOR UPDATE SKIP LOCKED``
and change them in the same statement, so two jobs at once take different coupons and a
coupon another job has just changed no longer matches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kit.db import Connection


@dataclass(frozen=True)
class DueCoupon:
    mall_id: str
    coupon_id: str
    stock_id: str
    member_id: str
    valid_until: datetime


def _due(row: Any) -> DueCoupon:
    return DueCoupon(
        row["mall_id"], row["coupon_id"], row["stock_id"], str(row["member_id"]), row["valid_until"]
    )


async def mark_reminders(
    conn: Connection, now: datetime, until: datetime, limit: int
) -> list[DueCoupon]:
    """Stamp up to ``limit`` available coupons expiring in (now, until] not reminded before."""
    rows = await conn.fetch(
        """WITH due AS (
             SELECT mall_id, coupon_id FROM coupons
              WHERE status = 'available' AND expiry_reminded_at IS NULL
                AND valid_until > $1 AND valid_until <= $2
              ORDER BY valid_until
              LIMIT $3
                FOR UPDATE SKIP LOCKED)
           UPDATE coupons c SET expiry_reminded_at = $1
             FROM due WHERE c.mall_id = due.mall_id AND c.coupon_id = due.coupon_id
           RETURNING c.mall_id, c.coupon_id, c.stock_id, c.member_id, c.valid_until""",
        now,
        until,
        limit,
    )
    return [_due(r) for r in rows]


async def expire(conn: Connection, now: datetime, limit: int) -> list[DueCoupon]:
    """Mark up to ``limit`` available coupons whose validity ended by ``now`` as expired."""
    rows = await conn.fetch(
        """WITH due AS (
             SELECT mall_id, coupon_id FROM coupons
              WHERE status = 'available' AND valid_until <= $1
              ORDER BY valid_until
              LIMIT $2
                FOR UPDATE SKIP LOCKED)
           UPDATE coupons c SET status = 'expired', expired_at = $1
             FROM due WHERE c.mall_id = due.mall_id AND c.coupon_id = due.coupon_id
           RETURNING c.mall_id, c.coupon_id, c.stock_id, c.member_id, c.valid_until""",
        now,
        limit,
    )
    return [_due(r) for r in rows]
