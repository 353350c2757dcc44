"""coupons.coupon.claimed (bought with points) → confirm the points hold that paid for it.

The gateway holds the price, claims the coupon with the hold's id, then confirms the hold. If
it never gets to the confirmation (a claim that timed out but went through, and no retry),
the coupon would be free once the hold timed out: coupons' claimed event carries the hold id,
so points confirms it here too. Confirming is idempotent, so the usual path (the gateway
confirmed first) changes nothing; a hold already given back or timed out is logged, not
retried: the claim outlived its payment, which ops see in the log and in the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from eventbus.consumer import Delivery
from kit.db import Connection
from kit.errors import Conflict, NotFound
from mall.coupons.v1 import coupons_pb2
from mall.coupons.v1 import events_pb2 as coupons_events

from points.service_layer.redemptions import confirm_hold

COUPON_CLAIMED = "coupons.coupon.claimed"
log = structlog.get_logger(__name__)


async def on_coupon_claimed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    for d in deliveries:
        claimed = d.decode(coupons_events.CouponClaimed)
        if claimed.channel != coupons_pb2.CLAIM_CHANNEL_POINTS or not claimed.redemption_id:
            continue
        try:
            await confirm_hold(conn, claimed.mall_id, claimed.redemption_id)
        except (Conflict, NotFound) as refused:
            log.warning(
                "reward_hold_not_confirmed",
                mall_id=claimed.mall_id,
                coupon_id=claimed.coupon_id,
                hold_id=claimed.redemption_id,
                code=refused.code,
            )
