"""Claim rules: who may claim a coupon of a stock, now, and what the answer is.

A batch of claims is judged in memory first (window, pause, audience); what survives competes for
the member limits and the stock's counter in the database, first come first served.
"""

from __future__ import annotations

import enum
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from coupons.domain.stocks import Stock

MAX_BATCH = 2_000


class Channel(enum.StrEnum):
    MINI_PROGRAM = "mini_program"
    POST_PAYMENT = "post_payment"
    POINTS = "points"
    OPS = "ops"
    PACKAGE_CARD = "package_card"
    GUIDE = "guide"


class Outcome(enum.StrEnum):
    CLAIMED = "claimed"
    SOLD_OUT = "sold_out"
    LIMIT_REACHED = "limit_reached"
    NOT_CLAIMABLE = "not_claimable"
    NOT_ELIGIBLE = "not_eligible"
    NOT_FOUND = "not_found"
    INVALID = "invalid"


@dataclass(frozen=True)
class Claim:
    mall_id: str
    stock_id: str
    member_id: str
    request_id: str
    tier_code: str = ""
    tags: tuple[str, ...] = ()
    channel: Channel = Channel.MINI_PROGRAM
    guide_id: str = ""
    claim_code: str = ""
    points_hold_id: str = ""
    #: POST_PAYMENT: the payment and rule that earned the coupon.
    transaction_id: str = ""
    rule_id: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """Idempotency key: a member's request id within a mall."""
        return (self.mall_id, self.member_id, self.request_id)


@dataclass(frozen=True)
class Refusal:
    outcome: Outcome
    reason: str
    message: str


def malformed(claim: Claim) -> Refusal | None:
    """A claim no stock could accept."""
    if not claim.mall_id or not claim.stock_id:
        return Refusal(Outcome.INVALID, "missing_field", "mall_id and stock_id are required")
    if not claim.request_id or len(claim.request_id) > 128:
        return Refusal(Outcome.INVALID, "invalid_request_id", "request_id: 1..128 characters")
    try:
        uuid.UUID(claim.member_id)
    except ValueError:
        return Refusal(Outcome.INVALID, "invalid_member_id", "member_id must be a UUID")
    if claim.channel is Channel.POINTS and not claim.points_hold_id:
        return Refusal(Outcome.INVALID, "missing_points_hold", "POINTS claims need a hold id")
    return None


def judge(claim: Claim, stock: Stock | None, now: datetime) -> Refusal | None:
    """Why this claim cannot compete for a coupon, or None when it can."""
    if stock is None:
        return Refusal(Outcome.NOT_FOUND, "stock_not_found", f"no stock {claim.stock_id}")
    if now < stock.claim_starts_at:
        return Refusal(Outcome.NOT_CLAIMABLE, "claim_not_started", "the claim window is not open")
    if now >= stock.claim_ends_at:
        return Refusal(Outcome.NOT_CLAIMABLE, "claim_ended", "the claim window is closed")
    if stock.paused:
        return Refusal(Outcome.NOT_CLAIMABLE, "stock_paused", "claims are paused")
    if stock.points_price and claim.channel not in (Channel.POINTS, Channel.POST_PAYMENT):
        return Refusal(Outcome.NOT_ELIGIBLE, "points_required", "this coupon costs points")
    if claim.channel not in (Channel.POST_PAYMENT, Channel.OPS):  # the audience claims itself
        if stock.audience_tiers and claim.tier_code not in stock.audience_tiers:
            return Refusal(Outcome.NOT_ELIGIBLE, "tier_not_eligible", "not for this tier")
        if stock.audience_tags and not set(stock.audience_tags) & set(claim.tags):
            return Refusal(Outcome.NOT_ELIGIBLE, "tag_not_eligible", "not for this member")
    if stock.claimed >= stock.issuable:
        return SOLD_OUT
    return None


SOLD_OUT = Refusal(Outcome.SOLD_OUT, "stock_sold_out", "no coupon left")
DAY_SOLD_OUT = Refusal(Outcome.SOLD_OUT, "stock_sold_out_today", "no coupon left today")
LIMIT_REACHED = Refusal(
    Outcome.LIMIT_REACHED, "member_limit_reached", "the member holds as many as allowed"
)
DAY_LIMIT_REACHED = Refusal(
    Outcome.LIMIT_REACHED,
    "member_daily_limit_reached",
    "the member claimed as many as allowed today",
)


def new_coupon_id() -> str:
    """An 18-digit code (the shopper shows it, the POS scans it), about 60 random bits."""
    return f"{secrets.randbelow(10**18):018d}"
