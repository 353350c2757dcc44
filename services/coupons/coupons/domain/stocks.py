"""Stock rules: what a valid stock is, who may claim it, how long its coupons last.

Pure Python: no database, no protobuf. A stock's terms never change after creation, so a coupon
needs only its stock to know what it gives and where it can be used.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from kit.errors import InvalidInput

MAX_COUPONS = 10_000_000
MAX_LIST = 200  # stores, tenants, tiers or tags on one stock


class Kind(enum.StrEnum):
    FIXED_AMOUNT = "fixed_amount"
    PERCENT_OFF = "percent_off"
    EXCHANGE = "exchange"
    PARKING = "parking"


@dataclass(frozen=True)
class Terms:
    """What every coupon of a stock gives and where it applies."""

    kind: Kind
    title: str
    description: str = ""
    discount_fen: int = 0
    threshold_fen: int = 0
    percent_off: int = 0
    max_discount_fen: int = 0
    parking_minutes: int = 0
    #: Stores where coupons apply; with ``tenant_ids`` empty too, every store of the stock's
    #: tenant (any store of the mall for a mall stock).
    store_ids: tuple[str, ...] = ()
    #: Brands (tenants) at whose stores coupons apply (cross-brand).
    tenant_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stock:
    mall_id: str
    stock_id: str
    #: Offering tenant; "" for the mall's own stock.
    tenant_id: str
    terms: Terms
    max_coupons: int
    budget_fen: int
    issuable: int
    max_per_member: int
    max_per_day: int
    audience_tiers: tuple[str, ...]
    audience_tags: tuple[str, ...]
    claim_starts_at: datetime
    claim_ends_at: datetime
    valid_from: datetime | None
    valid_until: datetime | None
    valid_days: int
    points_price: int
    paused: bool = False
    claimed: int = 0
    created_at: datetime | None = None
    #: Coupons one member may claim per mall day; 0 for none (max_per_day caps the stock's).
    max_per_member_per_day: int = 0

    def status(self, now: datetime) -> str:
        if now >= self.claim_ends_at:
            return "ended"
        if self.claimed >= self.issuable:
            return "exhausted"
        if self.paused:
            return "paused"
        return "active"

    def validity(self, claimed_at: datetime) -> tuple[datetime, datetime]:
        """A coupon claimed at ``claimed_at`` is valid over [from, until)."""
        if self.valid_days:
            return claimed_at, claimed_at + timedelta(days=self.valid_days)
        assert self.valid_until is not None  # one of the two, by construction and CHECK
        return self.valid_from or claimed_at, self.valid_until


@dataclass(frozen=True)
class NewStock:
    """A stock as its creator asks for it; ``validated`` refuses bad terms with a clear code."""

    mall_id: str
    tenant_id: str
    terms: Terms
    max_coupons: int
    claim_starts_at: datetime
    claim_ends_at: datetime
    request_id: str
    budget_fen: int = 0
    max_per_member: int = 0
    max_per_day: int = 0
    audience_tiers: tuple[str, ...] = ()
    audience_tags: tuple[str, ...] = ()
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    valid_days: int = 0
    points_price: int = 0
    max_per_member_per_day: int = 0

    def issuable(self) -> int:
        """min(max_coupons, budget / face value): the budget caps what may be issued."""
        face = face_value(self.terms)
        if self.budget_fen and face:
            return min(self.max_coupons, self.budget_fen // face)
        return self.max_coupons


def face_value(terms: Terms) -> int:
    """The most one coupon can cost its funder in fen (0 when not a money coupon)."""
    if terms.kind is Kind.FIXED_AMOUNT:
        return terms.discount_fen
    if terms.kind is Kind.PERCENT_OFF:
        return terms.max_discount_fen
    return 0


def _bad(code: str, message: str) -> InvalidInput:
    return InvalidInput(code, message)


def validate(stock: NewStock) -> NewStock:
    t = stock.terms
    if not stock.mall_id:
        raise _bad("missing_field", "mall_id is required")
    if not stock.request_id:
        raise _bad("missing_field", "request_id is required")
    if not t.title or len(t.title) > 100:
        raise _bad("invalid_title", "title is required, at most 100 characters")
    if len(t.description) > 2000:
        raise _bad("invalid_description", "description is at most 2000 characters")
    if t.kind is Kind.FIXED_AMOUNT:
        if t.discount_fen <= 0:
            raise _bad("invalid_discount", "a fixed-amount coupon needs discount_fen > 0")
        if t.threshold_fen and t.threshold_fen < t.discount_fen:
            raise _bad("invalid_threshold", "threshold_fen must be 0 or at least discount_fen")
    elif t.kind is Kind.PERCENT_OFF:
        if not 1 <= t.percent_off <= 99:
            raise _bad("invalid_percent_off", "percent_off must be 1..99")
    elif t.kind is Kind.EXCHANGE:
        if not t.description:
            raise _bad("invalid_description", "an exchange coupon says what it gives")
    elif t.kind is Kind.PARKING and not 0 < t.parking_minutes <= 24 * 60:
        raise _bad("invalid_parking_minutes", "parking_minutes must be 1..1440")
    if min(t.discount_fen, t.threshold_fen, t.max_discount_fen, stock.budget_fen) < 0:
        raise _bad("invalid_amount", "amounts cannot be negative")
    if not 0 < stock.max_coupons <= MAX_COUPONS:
        raise _bad("invalid_max_coupons", f"max_coupons must be 1..{MAX_COUPONS}")
    if stock.budget_fen and not face_value(t):
        raise _bad("invalid_budget", "a budget needs a face value (fixed amount or capped %)")
    if stock.budget_fen and stock.issuable() == 0:
        raise _bad("invalid_budget", "the budget does not cover one coupon")
    if min(stock.max_per_member, stock.max_per_day, stock.max_per_member_per_day) < 0:
        raise _bad("invalid_limit", "limits cannot be negative")
    if stock.points_price < 0:
        raise _bad("invalid_limit", "points price cannot be negative")
    if stock.max_per_member and stock.max_per_member_per_day > stock.max_per_member:
        raise _bad("invalid_limit", "max_per_member_per_day cannot exceed max_per_member")
    if stock.claim_ends_at <= stock.claim_starts_at:
        raise _bad("invalid_claim_window", "claim_ends_at must be after claim_starts_at")
    if stock.valid_days:
        if stock.valid_from or stock.valid_until:
            raise _bad("invalid_validity", "give valid_days or a validity window, not both")
        if not 0 < stock.valid_days <= 3650:
            raise _bad("invalid_validity", "valid_days must be 1..3650")
    elif stock.valid_until is None:
        raise _bad("invalid_validity", "give valid_days or valid_until")
    elif stock.valid_until <= (stock.valid_from or stock.claim_starts_at):
        raise _bad("invalid_validity", "valid_until must be after valid_from and claim start")
    for name in ("store_ids", "tenant_ids"):
        if len(getattr(t, name)) > MAX_LIST or "" in getattr(t, name):
            raise _bad("invalid_scope", f"{name}: at most {MAX_LIST} non-empty ids")
    for name in ("audience_tiers", "audience_tags"):
        if len(getattr(stock, name)) > MAX_LIST or "" in getattr(stock, name):
            raise _bad("invalid_audience", f"{name}: at most {MAX_LIST} non-empty values")
    return stock
