"""Parking-hour coupons used at a car park (parking.session.settled names them).

Parking applied the coupons when it quoted the stay; here they become USED, with the car park
and the session recorded, and coupons.coupon.redeemed is published as for a POS redemption.
Runs inside the batched inbox consumer's transaction, so a settled event seen twice is
handled once; and a coupon is only marked while still available, so even a replay outside
the inbox publishes nothing twice. A coupon already used (by another use), revoked or expired
meanwhile, or not a parking coupon at all, is left alone and logged.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from eventbus.outbox import add_events
from kit.db import Connection

from coupons.adapters import events
from coupons.adapters import parking_uses as sql
from coupons.domain.parking import ParkingUse, already_done

log = structlog.get_logger(__name__)


async def redeem_parking(
    conn: Connection, uses: Sequence[tuple[ParkingUse, dict[str, str]]]
) -> int:
    """Mark the coupons the settled sessions used; how many were marked now."""
    if not uses:
        return 0
    by_key = {(u.mall_id, u.coupon_id): (u, cause) for u, cause in uses}
    marked = await sql.mark_used(conn, [u for u, _ in by_key.values()])
    outgoing = []
    for m in marked:
        use, cause = by_key[(m.mall_id, m.coupon_id)]
        outgoing.append(
            events.parking_coupon_redeemed(
                m.mall_id,
                m.coupon_id,
                m.stock_id,
                m.tenant_id,
                m.member_id,
                car_park_id=use.car_park_id,
                session_id=use.session_id,
                use_request_id=use.use_request_id,
                gross_fee_fen=use.gross_fee_fen,
                discount_fen=use.discount_fen,
                headers=cause,
            )
        )
    await add_events(conn, outgoing)
    done = {(m.mall_id, m.coupon_id) for m in marked}
    left = [k for k in by_key if k not in done]
    found = await sql.seen(conn, left)
    for key in left:
        use, _ = by_key[key]
        state = found.get(key)
        if state is not None and already_done(use, state.status, state.use_request_id):
            continue
        log.warning(
            "parking_coupon_not_redeemed",
            mall_id=use.mall_id,
            coupon_id=use.coupon_id,
            session_id=use.session_id,
            car_park_id=use.car_park_id,
            reason="coupon_not_found"
            if state is None
            else "not_a_parking_coupon"
            if state.kind != "parking"
            else f"coupon_{state.status}",
        )
    return len(marked)
