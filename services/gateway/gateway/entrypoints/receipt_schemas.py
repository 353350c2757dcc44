"""Wire shapes of e-receipts and shopping guides (``entrypoints.receipts``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gateway.entrypoints.schemas import Coupon, Out, Wire


class ReceiptsQuery(Wire):
    cursor: Annotated[
        str,
        Field(
            pattern=r"^([0-9]{1,18}:[\x21-\x7e]{1,160})?$",
            description="next_cursor of the previous page; empty for the newest payments",
        ),
    ] = ""
    limit: Annotated[int, Field(ge=1, le=100, description="Receipts on the page")] = 20


class BindGuideBody(Wire):
    """Choose a shopping guide (导购) of a store where the shopper paid."""

    guide_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")]


class Receipt(Out):
    transaction_id: str
    tenant_id: str
    store_id: str
    store_name: str | None = Field(description="null: the gateway's directory copy lacks it")
    amount_fen: int
    refunded_fen: int
    source: str = Field(description="wechat_pay, pos_cash, pos_card, pos_other, receipt")
    paid_at: str = Field(description="RFC 3339, UTC")


class ReceiptPage(Out):
    receipts: list[Receipt] = Field(description="Newest first")
    next_cursor: str | None = Field(description="Pass as cursor for older ones; null: no more")


class ReceiptPoints(Out):
    earned: int = Field(description="Points the payment credited")
    reversed: int = Field(description="Points its refunds took back")
    credited: bool = Field(description="false: not credited yet (or it earned none)")


class StoreGuide(Out):
    guide_id: str
    name: str
    tenant_id: str
    store_id: str
    bound: bool = Field(description="The member is bound to this guide")


class ParkingBenefit(Out):
    free_minutes: int = Field(
        description="Free parking minutes the payment added to its day's spend benefit (0: it "
        "reached no new step), net of its refunds"
    )
    business_day: str = Field(description="The payment's day in the mall's time zone, YYYY-MM-DD")
    spend_before_fen: int = Field(description="The day's net spend before the payment")
    spend_after_fen: int = Field(description="The day's net spend with the payment")


class ReceiptDetail(Receipt):
    points: ReceiptPoints | None = Field(description="null: points did not answer in time")
    coupons_issued: list[Coupon] | None = Field(
        description="Coupons the payment issued (post-payment); null: coupons did not answer"
    )
    parking_benefit: ParkingBenefit | None = Field(
        description="Free parking time the payment added to its day; null: parking does not "
        "know the payment yet or did not answer"
    )
    guides: list[StoreGuide] | None = Field(
        description='The store\'s guides ("add your guide"); null: member did not answer'
    )


class Guide(Out):
    guide_id: str
    name: str
    tenant_id: str
    store_id: str
    bound_at: str = Field(description="RFC 3339, UTC")


class BoundGuide(Guide):
    previous_guide_id: str | None = Field(
        description="The tenant's guide the member was bound to before; null if none"
    )


class Guides(Out):
    guides: list[Guide] = Field(description="One per tenant, most recently bound first")
