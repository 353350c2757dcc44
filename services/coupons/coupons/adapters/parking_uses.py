"""SQL for parking-hour coupons used at a car park: one statement marks a batch used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kit.db import Connection

from coupons.domain.parking import ParkingUse


@dataclass(frozen=True)
class Marked:
    """A coupon just marked used, with what its event needs."""

    mall_id: str
    coupon_id: str
    stock_id: str
    tenant_id: str
    member_id: str


@dataclass(frozen=True)
class Seen:
    """A coupon named by a settlement that was not marked: why (its kind and state)."""

    mall_id: str
    coupon_id: str
    kind: str
    status: str
    use_request_id: str | None


async def mark_used(conn: Connection, uses: Sequence[ParkingUse]) -> list[Marked]:
    """Mark the named parking-hour coupons used by their sessions, each only while it is
    still available (a used, revoked or expired coupon is left as it is)."""
    if not uses:
        return []
    rows = await conn.fetch(
        """UPDATE coupons c SET status = 'used', redeemed_at = k.at, redeemed_store_id = '',
                  redeemed_car_park_id = k.park, use_request_id = k.use_id,
                  order_amount_fen = k.gross, discount_fen = k.off
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                         $6::bigint[], $7::bigint[]) AS k(m, id, park, use_id, at, gross, off),
                  stocks s
            WHERE c.mall_id = k.m AND c.coupon_id = k.id AND c.status = 'available'
              -- the primary key, whatever the estimates of a generic plan:
              AND c.mall_id = ANY($1::text[]) AND c.coupon_id = ANY($2::text[])
              AND s.mall_id = c.mall_id AND s.stock_id = c.stock_id AND s.kind = 'parking'
           RETURNING c.mall_id, c.coupon_id, c.stock_id, c.tenant_id, c.member_id::text""",
        [u.mall_id for u in uses],
        [u.coupon_id for u in uses],
        [u.car_park_id for u in uses],
        [u.use_request_id for u in uses],
        [u.used_at for u in uses],
        [u.gross_fee_fen for u in uses],
        [u.discount_fen for u in uses],
    )
    return [Marked(*r) for r in rows]


async def seen(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Seen]:
    """(mall, coupon) → its kind and state, for the coupons that exist among ``keys``."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT c.mall_id, c.coupon_id, s.kind, c.status, c.use_request_id
             FROM coupons c JOIN stocks s ON s.mall_id = c.mall_id AND s.stock_id = c.stock_id
            WHERE (c.mall_id, c.coupon_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["mall_id"], r["coupon_id"]): Seen(*r) for r in rows}
