"""SQL for members' parking-hour coupons (from coupons' events) and their use by sessions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kit.db import Connection

from parking.adapters.merges import SURVIVOR_SQL, lock_members


@dataclass(frozen=True)
class ParkingCoupon:
    coupon_id: str
    minutes: int
    valid_until: datetime | None


async def add(
    conn: Connection,
    coupons: Sequence[tuple[str, str, str, int, datetime | None, datetime | None]],
) -> None:
    """(mall_id, coupon_id, member_id, minutes, valid_from, valid_until); once per coupon."""
    if not coupons:
        return
    await lock_members(conn, [(c[0], c[2]) for c in coupons])
    await conn.executemany(
        """INSERT INTO member_coupons (mall_id, coupon_id, member_id, minutes, valid_from,
                valid_until)
           VALUES ($1, $2, """
        + SURVIVOR_SQL.format(mall="$1", member="$3::text")
        + """, $4, $5, $6) ON CONFLICT (mall_id, coupon_id) DO NOTHING""",
        list(coupons),
    )


async def revoke(conn: Connection, revoked: Sequence[tuple[str, str, str]]) -> None:
    """(mall_id, coupon_id, member_id): unusable from now (recorded even before the claim)."""
    if not revoked:
        return
    await conn.executemany(
        """INSERT INTO member_coupons (mall_id, coupon_id, member_id, minutes, revoked)
           VALUES ($1, $2, $3, 0, true)
           ON CONFLICT (mall_id, coupon_id) DO UPDATE SET revoked = true""",
        list(revoked),
    )


async def usable(
    conn: Connection, mall_id: str, member_id: str, at: datetime
) -> list[ParkingCoupon]:
    """Coupons the member can use at ``at``, soonest to expire first."""
    rows = await conn.fetch(
        """SELECT coupon_id, minutes, valid_until FROM member_coupons
            WHERE mall_id = $1 AND member_id = $2 AND used_session_id IS NULL AND NOT revoked
              AND minutes > 0
              AND (valid_from IS NULL OR valid_from <= $3)
              AND (valid_until IS NULL OR valid_until > $3)
            ORDER BY valid_until NULLS LAST, coupon_id""",
        mall_id,
        member_id,
        at,
    )
    return [ParkingCoupon(r["coupon_id"], r["minutes"], r["valid_until"]) for r in rows]


async def use(
    conn: Connection, mall_id: str, coupon_ids: list[str], session_id: str, at: datetime
) -> int:
    """Mark coupons used by a session; how many were still free (a retry counts its own)."""
    if not coupon_ids:
        return 0
    result = await conn.execute(
        """UPDATE member_coupons SET used_session_id = $3::uuid, used_at = $4
            WHERE mall_id = $1 AND coupon_id = ANY($2::text[]) AND NOT revoked
              AND (used_session_id IS NULL OR used_session_id = $3::uuid)""",
        mall_id,
        coupon_ids,
        session_id,
        at,
    )
    return int(result.rsplit(" ", 1)[-1])
