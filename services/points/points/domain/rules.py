"""Earning rules: versioned, effective-dated rates per tenant, tier, source and time window.

Pure Python. A mall's rules replace the foundation's 1 point per yuan (``BaseRate``) for the
payments they match; a payment no rule matches still earns by ``BaseRate``.

A put never changes a version: it appends the next one, in force from the moment it was
recorded (``recorded_at``). A payment is judged by the versions in force at its ``paid_at``,
so a late delivery of an old payment earns what it earned when it was made.

How a payment's points are computed (``RuleBook.quote``, then ``plan_credits``):

A rule may be scoped to one tenant (``tenant_id``) or to a tenant category
(``tenant_category``, as member's directory sets it on each payment), never both. At equal
priority a category rule yields to any other matching rule, so a tenant-specific rule
outranks a category rule; other ties go to the smallest rule_id.

1. **Base**: the matching *base* rule (no multiplier, no bonus) with the highest priority
   gives ``units * points_per_unit``, units counted by its ``rounding``; no base rule
   matching: the foundation's ``BaseRate``.
2. **Campaign**: the matching *campaign* (a rule with ``multiplier_percent`` or
   ``bonus_points``) with the highest priority stacks on the base:
   ``floor(base * multiplier_percent / 100) + bonus_points`` (an unset multiplier keeps the
   base). What it adds over the base (``extra``) comes out of its ``budget_points`` (per
   rule_id, across versions; 0 = unlimited): the payment that meets the end of the budget
   gets the remainder, later ones the base only.
3. **Daily cap**: the smallest non-zero ``daily_cap_points`` of the rules used (base and
   campaign) caps what the member's credits total per mall day (the payment's day in
   Asia/Shanghai), counting the credits of that day already in the ledger; the cap trims the
   campaign's extra first, and only what is granted of the extra is taken from the budget.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from kit.errors import InvalidInput

from points.domain.model import AttributedPayment, BaseRate, Quote

MAX_ID_LENGTH = 64


class Rounding(StrEnum):
    """How units of spend are counted (text in the database)."""

    DOWN = "down"
    HALF_UP = "half_up"
    UP = "up"

    def units(self, amount: int, unit: int) -> int:
        if self is Rounding.UP:
            return -(-amount // unit)
        if self is Rounding.HALF_UP:
            return (2 * amount + unit) // (2 * unit)
        return amount // unit


@dataclass(frozen=True)
class EarningRule:
    """One version of a rule: floor(amount / spend_unit_fen) * points_per_unit when it matches.

    A rule with ``points_per_unit = 0`` excludes what it matches (an excluded tenant); a rule
    for one tier with a higher rate plays the tier multiplier; a rule with a window and a high
    priority plays a campaign.
    """

    mall_id: str
    rule_id: str
    spend_unit_fen: int
    points_per_unit: int
    name: str = ""
    tier_code: str = ""
    tenant_id: str = ""
    sources: frozenset[str] = frozenset()
    min_amount_fen: int = 0
    priority: int = 0
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    version: int = 0
    recorded_at: datetime | None = None
    #: Campaign: percent applied to the base points (200 = x2); 0 = unset.
    multiplier_percent: int = 0
    #: Campaign: fixed points added to the base points.
    bonus_points: int = 0
    #: Campaign: points it may add in total (per rule_id); 0 = unlimited.
    budget_points: int = 0
    #: Points a member may earn per mall day when this rule is used; 0 = no cap.
    daily_cap_points: int = 0
    rounding: Rounding = Rounding.DOWN
    #: Only payments at tenants of this category; exclusive with ``tenant_id``.
    tenant_category: str = ""

    @property
    def is_campaign(self) -> bool:
        """A campaign stacks on the base points instead of replacing them."""
        return self.multiplier_percent > 0 or self.bonus_points > 0

    def validate(self) -> None:
        """Stable error codes for what ops may not store."""
        if not self.mall_id:
            raise InvalidInput("missing_field", "mall_id is required")
        if not self.rule_id or len(self.rule_id) > MAX_ID_LENGTH:
            raise InvalidInput("invalid_rule_id", f"rule_id is 1..{MAX_ID_LENGTH} characters")
        if self.spend_unit_fen <= 0:
            raise InvalidInput("invalid_spend_unit", "spend_unit_fen must be > 0")
        if self.points_per_unit < 0:
            raise InvalidInput("invalid_points_per_unit", "points_per_unit must be >= 0")
        if self.min_amount_fen < 0:
            raise InvalidInput("invalid_min_amount", "min_amount_fen must be >= 0")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise InvalidInput("invalid_window", "ends_at must be after starts_at")
        if self.multiplier_percent != 0 and self.multiplier_percent < 100:
            raise InvalidInput("invalid_multiplier", "multiplier_percent is 0 (unset) or >= 100")
        if self.bonus_points < 0:
            raise InvalidInput("invalid_bonus", "bonus_points must be >= 0")
        if self.budget_points < 0:
            raise InvalidInput("invalid_budget", "budget_points must be >= 0")
        if self.daily_cap_points < 0:
            raise InvalidInput("invalid_daily_cap", "daily_cap_points must be >= 0")
        if self.tenant_id and self.tenant_category:
            raise InvalidInput(
                "tenant_and_category", "tenant_id and tenant_category are mutually exclusive"
            )
        if len(self.tenant_category) > MAX_ID_LENGTH:
            raise InvalidInput(
                "invalid_tenant_category", f"tenant_category is at most {MAX_ID_LENGTH} characters"
            )

    @property
    def label(self) -> str:
        """What a credit records: ``<rule_id>@<version>``."""
        return f"{self.rule_id}@{self.version}"

    def matches(self, payment: AttributedPayment) -> bool:
        return (
            payment.mall_id == self.mall_id
            and (not self.tenant_id or payment.tenant_id == self.tenant_id)
            and (not self.tenant_category or payment.tenant_category == self.tenant_category)
            and (not self.tier_code or payment.tier_code == self.tier_code)
            and (not self.sources or payment.source in self.sources)
            and (self.starts_at is None or self.starts_at <= payment.paid_at)
            and (self.ends_at is None or payment.paid_at < self.ends_at)
        )

    def points_for(self, payment: AttributedPayment) -> int:
        """Units by the rule's rounding times points per unit; below the minimum, nothing."""
        if payment.amount_fen < self.min_amount_fen:
            return 0
        units = self.rounding.units(payment.amount_fen, self.spend_unit_fen)
        return units * self.points_per_unit

    def extra_for(self, payment: AttributedPayment, base: int) -> int:
        """What a campaign adds to ``base`` (before its budget); below the minimum, nothing."""
        if payment.amount_fen < self.min_amount_fen:
            return 0
        scaled = base * self.multiplier_percent // 100 if self.multiplier_percent else base
        return scaled - base + self.bonus_points

    @property
    def rank(self) -> tuple[int, bool, str]:
        """Sort key of matching rules, best first: highest priority; at equal priority a
        category rule yields to any other (so a tenant rule outranks it); then rule_id."""
        return (-self.priority, bool(self.tenant_category), self.rule_id)


def in_force(versions: Iterable[EarningRule], at: datetime) -> list[EarningRule]:
    """Per rule, the newest version recorded at or before ``at``."""
    current: dict[tuple[str, str], EarningRule] = {}
    for rule in versions:
        if rule.recorded_at is not None and rule.recorded_at > at:
            continue
        key = (rule.mall_id, rule.rule_id)
        if key not in current or current[key].version < rule.version:
            current[key] = rule
    return list(current.values())


class RuleBook:
    """All versions of the rules of some malls; judges each payment by those in force then."""

    def __init__(self, versions: Sequence[EarningRule], default: BaseRate | None = None) -> None:
        self._by_mall: dict[str, list[EarningRule]] = defaultdict(list)
        for rule in versions:
            self._by_mall[rule.mall_id].append(rule)
        self._default = default or BaseRate()

    def quote(self, payment: AttributedPayment) -> Quote:
        """The base rule (best ``EarningRule.rank``: highest priority; at equal priority a
        category rule yields to a tenant rule or any other; then the smallest rule_id, so the
        choice is stable; else the base rate) and the campaign stacking on it, if any."""
        matching = [
            r
            for r in in_force(self._by_mall.get(payment.mall_id, ()), payment.paid_at)
            if r.matches(payment)
        ]
        bases = [r for r in matching if not r.is_campaign]
        campaigns = [r for r in matching if r.is_campaign]
        if bases:
            base = min(bases, key=lambda r: r.rank)
            points, version, cap = base.points_for(payment), base.label, base.daily_cap_points
        else:
            points, version = self._default.earn(payment)
            cap = 0
        if not campaigns:
            return Quote(points, version, daily_cap=cap)
        campaign = min(campaigns, key=lambda r: r.rank)
        caps = [c for c in (cap, campaign.daily_cap_points) if c > 0]
        return Quote(
            points,
            version,
            campaign_id=campaign.rule_id,
            campaign_version=campaign.label,
            extra=campaign.extra_for(payment, points),
            budget=campaign.budget_points,
            daily_cap=min(caps, default=0),
        )

    def earn(self, payment: AttributedPayment) -> tuple[int, str]:
        """(points, rule version) ignoring budgets and daily caps (see ``plan_credits``)."""
        quote = self.quote(payment)
        return quote.points + quote.extra, quote.label(quote.extra)
