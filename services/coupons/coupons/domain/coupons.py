"""A coupon as its holder and the API see it: state, channel and its stock's terms."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from coupons.domain.stocks import Terms


@dataclass(frozen=True)
class Coupon:
    mall_id: str
    coupon_id: str
    stock_id: str
    tenant_id: str
    member_id: str
    status: str
    channel: str
    terms: Terms
    claimed_at: datetime
    valid_from: datetime
    valid_until: datetime
    guide_id: str = ""
    transaction_id: str = ""
    redeemed_at: datetime | None = None
    redeemed_store_id: str = ""
    #: A parking-hour coupon used at a car park (parking.session.settled).
    redeemed_car_park_id: str = ""
