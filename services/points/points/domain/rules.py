"""Earning rules: versioned, effective-dated rates per tenant, tier, source and time window.

Pure Python. A mall's rules replace the foundation's 1 point per yuan (``BaseRate``) for the
payments they match; a payment no rule matches still earns by ``BaseRate``.

A put never changes a version: it appends the next one, in force from the moment it was
recorded (``recorded_at``). A payment is judged by the versions in force at its ``paid_at``,
so a late delivery of an old payment earns what it earned when it was made.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from kit.errors import InvalidInput

from points.domain.model import AttributedPayment, BaseRate

MAX_ID_LENGTH = 64


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

    @property
    def label(self) -> str:
        """What a credit records: ``<rule_id>@<version>``."""
        return f"{self.rule_id}@{self.version}"

    def matches(self, payment: AttributedPayment) -> bool:
        return (
            payment.mall_id == self.mall_id
            and (not self.tenant_id or payment.tenant_id == self.tenant_id)
            and (not self.tier_code or payment.tier_code == self.tier_code)
            and (not self.sources or payment.source in self.sources)
            and (self.starts_at is None or self.starts_at <= payment.paid_at)
            and (self.ends_at is None or payment.paid_at < self.ends_at)
        )

    def points_for(self, payment: AttributedPayment) -> int:
        """Whole units only (rounded down); below the minimum amount, nothing."""
        if payment.amount_fen < self.min_amount_fen:
            return 0
        return (payment.amount_fen // self.spend_unit_fen) * self.points_per_unit


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

    def earn(self, payment: AttributedPayment) -> tuple[int, str]:
        """(points, rule version) for one payment: the matching rule of highest priority
        (ties go to the smallest rule_id, so the choice is stable), else the base rate."""
        matching = [
            r
            for r in in_force(self._by_mall.get(payment.mall_id, ()), payment.paid_at)
            if r.matches(payment)
        ]
        if not matching:
            return self._default.earn(payment)
        best = min(matching, key=lambda r: (-r.priority, r.rule_id))
        return best.points_for(payment), best.label
