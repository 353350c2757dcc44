"""Redemption rules (核销): may this coupon be used at this store for this order, and for how much.

Each refusal has its own stable reason (the ErrorInfo reason at the gRPC edge), so a POS can tell
the cashier exactly why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kit.errors import Conflict, Forbidden, InvalidInput

from coupons.domain.stocks import Kind, Terms


@dataclass(frozen=True)
class Held:
    """A coupon as redemption sees it: its state and its stock's terms."""

    mall_id: str
    coupon_id: str
    stock_id: str
    #: Offering tenant; "" for a mall coupon.
    tenant_id: str
    member_id: str
    status: str
    valid_from: datetime
    valid_until: datetime
    terms: Terms
    use_request_id: str | None = None
    redeemed_store_id: str = ""
    discount_fen: int = 0


@dataclass(frozen=True)
class Use:
    mall_id: str
    coupon_id: str
    store_id: str
    #: Tenant of ``store_id`` (from the directory) — must be the caller's.
    store_tenant_id: str
    use_request_id: str
    order_amount_fen: int
    transaction_id: str = ""

    def __post_init__(self) -> None:
        for name in ("mall_id", "coupon_id", "store_id", "use_request_id"):
            if not getattr(self, name):
                raise InvalidInput("missing_field", f"{name} is required")
        if len(self.use_request_id) > 128:
            raise InvalidInput("invalid_use_request_id", "use_request_id: 1..128 characters")
        if self.order_amount_fen < 0:
            raise InvalidInput("invalid_order_amount", "order_amount_fen cannot be negative")


def usable_at(coupon: Held, store_id: str, store_tenant_id: str) -> bool:
    terms = coupon.terms
    if terms.store_ids or terms.tenant_ids:
        return store_id in terms.store_ids or store_tenant_id in terms.tenant_ids
    return not coupon.tenant_id or coupon.tenant_id == store_tenant_id


def discount(terms: Terms, order_amount_fen: int) -> int:
    """Fen the coupon takes off an order of ``order_amount_fen`` (never more than the order)."""
    if terms.kind is Kind.FIXED_AMOUNT:
        return min(terms.discount_fen, order_amount_fen)
    if terms.kind is Kind.PERCENT_OFF:
        off = order_amount_fen * terms.percent_off // 100
        return min(off, terms.max_discount_fen) if terms.max_discount_fen else off
    return 0


def check(coupon: Held, use: Use, now: datetime) -> int:
    """The discount in fen, or the refusal. A retry of the same use is answered by the caller
    before this (the coupon is USED by then)."""
    if not usable_at(coupon, use.store_id, use.store_tenant_id):
        raise Forbidden("coupon_not_usable_here", "this coupon cannot be used at this store")
    if coupon.status == "used":
        raise Conflict("coupon_used", "this coupon has been used")
    if coupon.status == "revoked":
        raise Conflict("coupon_revoked", "this coupon was taken back")
    if coupon.status == "expired" or now >= coupon.valid_until:
        raise Conflict("coupon_expired", "this coupon has expired")
    if now < coupon.valid_from:
        raise Conflict("coupon_not_yet_valid", "this coupon is not valid yet")
    if use.order_amount_fen < coupon.terms.threshold_fen:
        raise Conflict(
            "below_threshold",
            f"the order must reach {coupon.terms.threshold_fen} fen",
            threshold_fen=str(coupon.terms.threshold_fen),
        )
    return discount(coupon.terms, use.order_amount_fen)
