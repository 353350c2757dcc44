"""Tiers: an ordered ladder per mall, qualified by rolling 12-month spend.

A member moves up the moment their spend reaches a higher threshold; they move down only at
their review date (a year after their last upgrade), to the tier their spend then earns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from kit.errors import InvalidInput


@dataclass(frozen=True)
class Tier:
    tier_code: str
    name: str
    rank: int
    threshold_fen: int  # rolling 12-month spend that qualifies


#: What a mall starts with until ops define its own ladder.
DEFAULT_TIERS = (
    Tier("basic", "普通会员", 0, 0),
    Tier("silver", "银卡会员", 1, 500_000),
    Tier("gold", "金卡会员", 2, 2_000_000),
)


class TierLadder:
    """A mall's tiers, lowest first."""

    def __init__(self, tiers: Iterable[Tier]) -> None:
        self.tiers = sorted(tiers, key=lambda t: t.rank)
        if not self.tiers:
            raise InvalidInput("no_tiers", "a mall needs at least one tier")
        self._by_code = {t.tier_code: t for t in self.tiers}

    @property
    def lowest(self) -> Tier:
        return self.tiers[0]

    def tier(self, tier_code: str) -> Tier | None:
        return self._by_code.get(tier_code)

    def rank_of(self, tier_code: str) -> int:
        tier = self._by_code.get(tier_code)
        return tier.rank if tier else -1  # a tier ops removed ranks below all

    def earned(self, spend_fen: int) -> Tier:
        """The highest tier this spend qualifies for."""
        qualified = [t for t in self.tiers if t.threshold_fen <= spend_fen]
        return qualified[-1] if qualified else self.lowest

    def upgrade(self, current: str, spend_fen: int) -> Tier | None:
        """The tier to move up to now, if the spend earns one above the current."""
        earned = self.earned(spend_fen)
        return earned if earned.rank > self.rank_of(current) else None


def years_later(moment: datetime, years: int) -> datetime:
    """The same wall-clock moment ``years`` on (29 February becomes 28 February)."""
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:
        return moment.replace(year=moment.year + years, day=28)


def spend_window_start(now: datetime) -> datetime:
    """Payments after this count towards the rolling 12-month spend."""
    return years_later(now, -1)


def next_review(upgraded_at: datetime) -> datetime:
    return years_later(upgraded_at, 1)
