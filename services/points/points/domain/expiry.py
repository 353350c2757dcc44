"""Points expiry: when a lot of points stops being spendable. Pure Python; no I/O.

A mall's policy is either ``end_of_next_year`` (the default: points earned in 2025 expire when
2026 ends, midnight in the mall's time zone) or ``days:N`` (N days after they were earned).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from kit.errors import InvalidInput

DEFAULT_TIME_ZONE = "Asia/Shanghai"
END_OF_NEXT_YEAR = "end_of_next_year"
POLICY_PATTERN = r"^(end_of_next_year|days:[1-9][0-9]{0,4})$"


@dataclass(frozen=True)
class ExpiryPolicy:
    """``days`` None: end of the year after the one the points were earned in."""

    days: int | None = None
    time_zone: str = DEFAULT_TIME_ZONE

    @classmethod
    def parse(cls, value: str, time_zone: str = DEFAULT_TIME_ZONE) -> ExpiryPolicy:
        if not re.fullmatch(POLICY_PATTERN, value):
            raise InvalidInput(
                "invalid_expiry_policy", f"expected {END_OF_NEXT_YEAR} or days:N, got {value!r}"
            )
        days = None if value == END_OF_NEXT_YEAR else int(value.removeprefix("days:"))
        return cls(days, time_zone)

    def expires_at(self, earned_at: datetime) -> datetime:
        """The instant a lot earned at ``earned_at`` (timezone-aware) expires."""
        if self.days is not None:
            return earned_at + timedelta(days=self.days)
        zone = ZoneInfo(self.time_zone)
        year = earned_at.astimezone(zone).year
        return datetime(year + 2, 1, 1, tzinfo=zone)


DEFAULT_EXPIRY = ExpiryPolicy()


def lot_points(points: int, balance_after: int) -> int:
    """Points of a credit that go into a lot: what is left after settling a negative balance
    (points that paid a debt are spent already, so they cannot expire)."""
    return max(0, min(points, balance_after))
