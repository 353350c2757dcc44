"""What parking gives a member today, parked or not, and what one payment added to it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from kit.db import Connection
from kit.errors import NotFound

from parking.adapters import coupons, members
from parking.adapters.coupons import ParkingCoupon
from parking.domain.benefits import ParkingPolicy
from parking.service_layer.config_cache import ConfigCache

_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class TodayBenefits:
    business_day: date
    #: The end of the mall's day (exclusive): the day's spend counts until then.
    valid_until: datetime
    policy: ParkingPolicy
    tier_code: str
    spend_fen: int
    coupons: list[ParkingCoupon]

    @property
    def tier_minutes(self) -> int:
        tier = self.policy.tier_benefit(self.tier_code)
        return tier.free_minutes if tier else 0

    @property
    def spend_minutes(self) -> int:
        return self.policy.spend_minutes(self.spend_fen)

    @property
    def next_step(self) -> tuple[int, int]:
        return self.policy.next_spend_step(self.spend_fen)

    @property
    def free_minutes(self) -> int:
        """Tier, spend and every usable coupon: what a stay ending today gets at most."""
        return self.tier_minutes + self.spend_minutes + sum(c.minutes for c in self.coupons)


async def member_benefits(
    conn: Connection, config: ConfigCache, mall_id: str, member_id: str, now: datetime
) -> TodayBenefits:
    mall = await config.mall(conn, mall_id)
    tz = mall.time_zone
    day = now.astimezone(tz).date()
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    facts = await members.facts(conn, mall_id, member_id, start, end - _TICK)
    usable = await coupons.usable(conn, mall_id, member_id, now)
    return TodayBenefits(day, end, mall.policy, facts.tier_code, facts.spend_fen, usable)


@dataclass(frozen=True)
class PaymentBenefit:
    business_day: date
    spend_before_fen: int
    spend_after_fen: int
    free_minutes: int


async def payment_benefit(
    conn: Connection, config: ConfigCache, mall_id: str, member_id: str, transaction_id: str
) -> PaymentBenefit:
    """The free minutes a payment added to its day: its step over the day's spend before it
    (net of refunds, its own included), under the mall's policy now."""
    mall = await config.mall(conn, mall_id)
    found = await members.payment_spend(
        conn, mall_id, member_id, transaction_id, time_zone=mall.time_zone.key
    )
    if found is None:
        raise NotFound("payment_not_found", "parking does not know that payment of the member")
    after = found.spend_before_fen + found.amount_fen
    policy = mall.policy
    return PaymentBenefit(
        business_day=found.paid_at.astimezone(mall.time_zone).date(),
        spend_before_fen=found.spend_before_fen,
        spend_after_fen=after,
        free_minutes=policy.spend_minutes(after) - policy.spend_minutes(found.spend_before_fen),
    )
