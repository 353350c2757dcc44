"""Redemption (核销) at a tenant POS: one transaction, idempotent on the use request id."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from eventbus.outbox import add_events
from kit import context
from kit.db import Connection
from kit.errors import NotFound

from coupons.adapters import coupons as coupons_sql
from coupons.adapters import events
from coupons.domain.coupons import Coupon
from coupons.domain.redemption import Use, check


async def redeem(conn: Connection, use: Use, now: datetime | None = None) -> tuple[Coupon, int]:
    """The used coupon and the fen it takes off. A retry of the same use (same request id and
    store) answers as the first time; anything else on a used coupon is refused."""
    now = now or datetime.now(UTC)
    async with conn.transaction():
        locked = await coupons_sql.lock(conn, use.mall_id, use.coupon_id)
        if locked is None:
            raise NotFound("coupon_not_found", f"no coupon {use.coupon_id}")
        held = locked.held
        if (
            held.status == "used"
            and held.use_request_id == use.use_request_id
            and held.redeemed_store_id == use.store_id
        ):
            return locked.coupon, held.discount_fen
        off = check(held, use, now)
        await coupons_sql.mark_used(
            conn,
            use.mall_id,
            use.coupon_id,
            at=now,
            store_id=use.store_id,
            use_request_id=use.use_request_id,
            order_amount_fen=use.order_amount_fen,
            discount_fen=off,
            transaction_id=use.transaction_id,
        )
        coupon = replace(
            locked.coupon, status="used", redeemed_at=now, redeemed_store_id=use.store_id
        )
        await add_events(
            conn,
            [
                events.coupon_redeemed(
                    coupon,
                    store_id=use.store_id,
                    use_request_id=use.use_request_id,
                    order_amount_fen=use.order_amount_fen,
                    discount_fen=off,
                    headers=context.current(),
                )
            ],
        )
    return coupon, off
