"""Rewards bought with points (积分兑换) as the gateway sees them: a stock's price and audience,
the idempotency keys of the steps of one redemption, and its refusals beyond a claim's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kit.errors import AppError, Conflict, NotFound


@dataclass(frozen=True)
class RewardStock:
    """A coupons stock as a reward: its price in points and audience (its terms never change,
    so the gateway keeps them), and what the app shows."""

    stock_id: str
    points_price: int
    audience_tiers: tuple[str, ...] = ()
    audience_tags: tuple[str, ...] = ()
    view: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def anyone(self) -> bool:
        return not self.audience_tiers and not self.audience_tags


@dataclass(frozen=True)
class Redemption:
    """A redeemed reward: the coupon, the points it cost and the balance after."""

    coupon: dict[str, Any]
    points_spent: int
    points_balance: int
    redemption_id: str


def hold_key(member_id: str, request_id: str) -> str:
    """points' hold key for the app's request_id: points keys holds per mall, the app per
    member, so the member is part of it."""
    return f"reward:{member_id}:{request_id}"


def late_hold_key(member_id: str, request_id: str) -> str:
    """The key of the hold that pays for a coupon claimed after its first hold was given back
    (see ``service_layer.rewards``)."""
    return f"reward:{member_id}:{request_id}:late"


#: Codes a redemption adds to a claim's (``domain.claims.CLAIM_CODES``).
REWARD_CODES = ["insufficient_points", "not_for_points"]


def not_for_points(stock_id: str) -> AppError:
    return Conflict("not_for_points", f"stock {stock_id} is not sold for points")


def no_such_stock(stock_id: str) -> AppError:
    return NotFound("stock_not_found", "no such coupon", reason="stock_not_found")
