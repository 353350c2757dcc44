"""Wire shapes of rewards bought with points (``entrypoints.rewards``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gateway.entrypoints.schemas import Coupon, Out, Wire

_ID = r"^[A-Za-z0-9_-]{1,64}$"


class RedeemBody(Wire):
    """Buy a coupon of a stock with points (积分兑换)."""

    stock_id: Annotated[str, Field(pattern=_ID, description="The stock priced in points")]
    request_id: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
            description="The app's idempotency key: a retry with it returns the same coupon "
            "and spends the points once",
        ),
    ]


class RewardsQuery(Wire):
    cursor: Annotated[
        str,
        Field(
            pattern=r"^([0-9]{1,16}:[A-Za-z0-9_-]{1,64})?$",
            description="next_cursor of the previous page; empty for the newest rewards",
        ),
    ] = ""
    limit: Annotated[int, Field(ge=1, le=100, description="Stocks looked at for the page")] = 20


class Reward(Out):
    stock_id: str
    tenant_id: str = Field(description="Empty for a coupon of the mall itself")
    title: str
    description: str
    coupon_type: Literal["fixed_amount", "percent_off", "exchange", "parking", "unspecified"]
    discount_fen: int
    threshold_fen: int
    percent_off: int
    max_discount_fen: int
    parking_minutes: int
    points_price: int = Field(description="Points one coupon costs")
    max_per_member: int = Field(description="Coupons one member may hold; 0: no limit")
    claim_ends_at: str = Field(description="RFC 3339, UTC; redeemable until then (exclusive)")
    valid_days: int = Field(description="Days a coupon stays valid once redeemed; 0: fixed")
    valid_until: str | None = Field(description="End of a fixed validity window")


class RewardsPage(Out):
    rewards: list[Reward] = Field(
        description="Stocks priced in points, open now, newest first (a page may hold fewer "
        "than limit, even none, while next_cursor is set)"
    )
    next_cursor: str | None = Field(description="Pass as cursor for older ones; null: no more")


class Redeemed(Out):
    coupon: Coupon
    points_spent: int = Field(description="The points this coupon cost")
    points_balance: int = Field(description="The member's balance after the redemption")
    redemption_id: str = Field(description="points' redemption (the ledger's reference)")
