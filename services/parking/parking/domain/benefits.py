"""Member benefits at the exit: free time by tier, by spend on the days of the stay, from
parking-hour coupons, and hours bought with points. Pure code.

Benefits are applied in that order (free ones first, points last since they cost the member),
each as free minutes covering whole units from the start of the stay; the quote shows what each
one took off. A coupon that would take nothing off is not used (the member keeps it); points
buy only the hours still needed, up to the mall's limit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from kit.errors import InvalidInput

from parking.domain.fees import FeeSchedule, charge

DEFAULT_MAX_PLATES = 3
DEFAULT_QUOTE_VALID_MINUTES = 15


class BenefitKind(enum.Enum):
    TIER = "tier"
    SPEND = "spend"
    COUPON = "coupon"
    POINTS = "points"


@dataclass(frozen=True)
class ParkingPolicy:
    """A mall's parking settings and benefits (version 0: the defaults, never stored)."""

    max_plates_per_member: int = DEFAULT_MAX_PLATES
    tier_minutes: dict[str, int] = field(default_factory=dict)
    spend_step_fen: int = 0
    spend_step_minutes: int = 0
    spend_max_minutes: int = 0
    points_per_hour: int = 0
    points_max_hours: int = 0
    quote_valid_minutes: int = DEFAULT_QUOTE_VALID_MINUTES
    version: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_plates_per_member <= 20:
            raise InvalidInput("invalid_policy", "max_plates_per_member must be 1..20")
        if any(not code or not 0 <= m <= 7 * 1440 for code, m in self.tier_minutes.items()):
            raise InvalidInput("invalid_policy", "tier benefits need a code and 0..10080 minutes")
        for name in ("spend_step_fen", "points_per_hour"):
            if not 0 <= getattr(self, name) <= 100_000_000:
                raise InvalidInput("invalid_policy", f"{name} must be 0..100000000")
        for name in ("spend_step_minutes", "spend_max_minutes"):
            if not 0 <= getattr(self, name) <= 7 * 1440:
                raise InvalidInput("invalid_policy", f"{name} must be 0..10080")
        if not 0 <= self.points_max_hours <= 72:
            raise InvalidInput("invalid_policy", "points_max_hours must be 0..72")
        if not 1 <= self.quote_valid_minutes <= 120:
            raise InvalidInput("invalid_policy", "quote_valid_minutes must be 1..120")

    def tier_benefit(self, tier_code: str) -> Benefit | None:
        minutes = self.tier_minutes.get(tier_code, 0) if tier_code else 0
        if minutes <= 0:
            return None
        return Benefit(BenefitKind.TIER, f"{tier_code} 会员 免费{_hours(minutes)}", minutes)

    def spend_minutes(self, spend_fen: int) -> int:
        """Free minutes a day's net spend gives (whole steps, up to the day's most)."""
        if self.spend_step_fen <= 0 or spend_fen <= 0:
            return 0
        return min(
            self.spend_max_minutes, (spend_fen // self.spend_step_fen) * self.spend_step_minutes
        )

    def next_spend_step(self, spend_fen: int) -> tuple[int, int]:
        """(fen still to spend, free minutes from spend then) for the next step that gives
        more time; (0, 0) when no further step does."""
        now = self.spend_minutes(spend_fen)
        if self.spend_step_fen <= 0 or self.spend_step_minutes <= 0:
            return 0, 0
        if now >= self.spend_max_minutes:
            return 0, 0
        target = (max(spend_fen, 0) // self.spend_step_fen + 1) * self.spend_step_fen
        return target - max(spend_fen, 0), self.spend_minutes(target)

    def spend_benefit(self, spend_fen: int) -> Benefit | None:
        minutes = self.spend_minutes(spend_fen)
        if minutes <= 0:
            return None
        return Benefit(
            BenefitKind.SPEND,
            f"消费{spend_fen / 100:.2f}元 免费{_hours(minutes)}",
            minutes,
        )

    @property
    def points_enabled(self) -> bool:
        return self.points_per_hour > 0 and self.points_max_hours > 0


def _hours(minutes: int) -> str:
    return f"{minutes // 60}小时" + (f"{minutes % 60}分钟" if minutes % 60 else "")


@dataclass(frozen=True)
class Benefit:
    kind: BenefitKind
    description: str
    free_minutes: int
    points: int = 0
    coupon_id: str = ""


@dataclass(frozen=True)
class Applied:
    benefit: Benefit
    discount_fen: int


@dataclass(frozen=True)
class Priced:
    gross_fen: int
    applied: tuple[Applied, ...]

    @property
    def discount_fen(self) -> int:
        return sum(a.discount_fen for a in self.applied)

    @property
    def payable_fen(self) -> int:
        return self.gross_fen - self.discount_fen

    @property
    def points(self) -> int:
        return sum(a.benefit.points for a in self.applied)

    @property
    def coupon_ids(self) -> list[str]:
        return [a.benefit.coupon_id for a in self.applied if a.benefit.kind == BenefitKind.COUPON]

    def without_points(self) -> Priced:
        return Priced(
            self.gross_fen, tuple(a for a in self.applied if a.benefit.kind != BenefitKind.POINTS)
        )


def price(
    schedule: FeeSchedule | None,
    entered: datetime,
    exited: datetime,
    tz: ZoneInfo,
    benefits: list[Benefit],
    *,
    policy: ParkingPolicy | None = None,
    use_points: bool = False,
) -> Priced:
    """The fee of a stay with ``benefits`` applied in order, then (``use_points``) the points
    hours still needed, each benefit's share of the discount shown."""
    if schedule is None:
        return Priced(0, ())

    def owed(minutes: int) -> int:
        return charge(schedule, entered, exited, tz, free_minutes=minutes)

    gross = owed(0)
    applied: list[Applied] = []
    covered = 0
    before = gross
    for benefit in benefits:
        if benefit.free_minutes <= 0:
            continue
        covered += benefit.free_minutes
        after = owed(covered)
        applied.append(Applied(benefit, before - after))
        before = after
    # Coupons after the last one that took something off are not used: the member keeps them.
    while (
        applied and applied[-1].benefit.kind == BenefitKind.COUPON and not applied[-1].discount_fen
    ):
        covered -= applied.pop().benefit.free_minutes
    if use_points and policy is not None and policy.points_enabled and before > 0:
        hours = 0
        while hours < policy.points_max_hours and owed(covered + 60 * hours) > 0:
            hours += 1
        if hours:
            after = owed(covered + 60 * hours)
            points = Benefit(
                BenefitKind.POINTS,
                f"积分抵扣{hours}小时",
                60 * hours,
                points=hours * policy.points_per_hour,
            )
            applied.append(Applied(points, before - after))
    return Priced(gross, tuple(applied))
