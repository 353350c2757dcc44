"""Parking-hour coupons used at a car park: parking applies them to a stay and names them in
parking.session.settled; coupons then records them used (no POS, no store, no order)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ParkingUse:
    """One coupon a settled parking session used."""

    mall_id: str
    coupon_id: str
    session_id: str
    car_park_id: str
    #: Member the session belonged to (the coupon's holder, unless merged since).
    member_id: str
    used_at: datetime
    #: The stay's fee before benefits, and what this coupon took off it.
    gross_fee_fen: int
    discount_fen: int

    @property
    def use_request_id(self) -> str:
        """The redemption's idempotency key: one use per (session, coupon)."""
        return f"parking:{self.session_id}"


def already_done(use: ParkingUse, status: str, use_request_id: str | None) -> bool:
    """The coupon is used by this very session (a settled event seen again)."""
    return status == "used" and use_request_id == use.use_request_id
