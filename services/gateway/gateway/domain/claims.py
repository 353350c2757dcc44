"""A shopper's coupon claim as the gateway sees it, and what each refusal is called on the wire.

coupons answers a refused claim with a stable reason (the ErrorInfo reason of ClaimCoupon, the
``reason`` of a ClaimCoupons result); the mini-program matches on a shorter ``code`` and can
still read coupons' ``reason`` beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kit.errors import AppError, Conflict, Forbidden, InvalidInput, NotFound


@dataclass(frozen=True)
class ClaimRequest:
    mall_id: str
    member_id: str
    stock_id: str
    request_id: str
    tier_code: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claimed:
    """A claim's answer: the coupon (plain data for the view) or the refusal to raise."""

    coupon: dict[str, object] | None
    refusal: AppError | None = None


#: coupons' reason → (error class, the gateway's code, what the shopper is told).
REFUSALS: dict[str, tuple[type[AppError], str, str]] = {
    "stock_sold_out": (Conflict, "sold_out", "no coupon left"),
    "stock_sold_out_today": (Conflict, "sold_out", "no coupon left today"),
    "member_limit_reached": (Conflict, "limit_reached", "you hold as many as allowed"),
    "member_daily_limit_reached": (
        Conflict,
        "limit_reached",
        "you claimed as many as allowed today",
    ),
    "claim_not_started": (Conflict, "not_open_yet", "claims have not opened yet"),
    "claim_ended": (Conflict, "claim_ended", "claims are over"),
    "stock_paused": (Conflict, "paused", "claims are paused"),
    "tier_not_eligible": (Forbidden, "not_eligible", "not for your member tier"),
    "tag_not_eligible": (Forbidden, "not_eligible", "not for you"),
    "points_required": (Forbidden, "points_required", "this coupon is bought with points"),
    "stock_not_found": (NotFound, "stock_not_found", "no such coupon"),
    "code_not_found": (NotFound, "code_not_found", "no such claim code"),
    "request_id_reused": (
        Conflict,
        "request_id_reused",
        "this request_id was used for another claim",
    ),
}

#: Every code a claim can be refused with (the spec lists them).
CLAIM_CODES = sorted({code for _, code, _ in REFUSALS.values()})


def refusal(reason: str, message: str = "") -> AppError:
    """The gateway's error for a refusal coupons gave with ``reason``."""
    known = REFUSALS.get(reason)
    if known is None:  # malformed (coupons checked what the gateway let through)
        return InvalidInput("invalid_claim", message or reason, reason=reason)
    kind, code, text = known
    return kind(code, text, reason=reason)


def sold_out(reason: str = "stock_sold_out") -> AppError:
    return refusal(reason)
