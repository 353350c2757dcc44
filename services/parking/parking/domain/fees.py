"""Parking fees: versioned, effective-dated schedules and the price of a stay. Pure code.

A stay no longer than the free minutes costs nothing; a longer one pays from its entry, per
started unit (15, 30 or 60 minutes). A unit costs the night rate when it starts at night in
the mall's time zone, else the day rate. Each calendar day (mall time zone, by the unit's
start) is capped at the daily cap, so a stay of several days pays at most one cap per day.

Free time from benefits covers whole units from the start of the stay; because units are only
ever added as a stay grows and caps apply per day, the fee never drops as a stay grows and
never exceeds one cap per calendar day touched.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from kit.errors import InvalidInput

UNIT_CHOICES = (15, 30, 60)
MINUTES_PER_DAY = 24 * 60
_MINUTE = timedelta(minutes=1)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class FeeSchedule:
    """One version of a car park's tariff. Money in fen, minutes of the day in local time."""

    free_minutes: int
    unit_minutes: int
    unit_fee_fen: int
    daily_cap_fen: int = 0
    night_start_minute: int = 0
    night_end_minute: int = 0
    night_unit_fee_fen: int = 0
    missing_entry_fee_fen: int = 0
    effective_from: datetime | None = None
    version: int = 0

    def __post_init__(self) -> None:
        if self.unit_minutes not in UNIT_CHOICES:
            raise InvalidInput("invalid_schedule", "unit_minutes must be 15, 30 or 60")
        if not 0 <= self.free_minutes <= MINUTES_PER_DAY:
            raise InvalidInput("invalid_schedule", "free_minutes must be 0..1440")
        for name in ("unit_fee_fen", "daily_cap_fen", "night_unit_fee_fen"):
            if not 0 <= getattr(self, name) <= 10_000_000:
                raise InvalidInput("invalid_schedule", f"{name} must be 0..10000000 fen")
        if not 0 <= self.missing_entry_fee_fen <= 10_000_000:
            raise InvalidInput("invalid_schedule", "missing_entry_fee_fen must be 0..10000000")
        for name in ("night_start_minute", "night_end_minute"):
            if not 0 <= getattr(self, name) < MINUTES_PER_DAY:
                raise InvalidInput("invalid_schedule", f"{name} must be 0..1439")

    @property
    def has_night(self) -> bool:
        return self.night_start_minute != self.night_end_minute

    def is_night(self, local: datetime) -> bool:
        if not self.has_night:
            return False
        minute = local.hour * 60 + local.minute
        start, end = self.night_start_minute, self.night_end_minute
        if start < end:
            return start <= minute < end
        return minute >= start or minute < end  # across midnight (22:00-07:00)

    def unit_fee(self, local: datetime) -> int:
        return self.night_unit_fee_fen if self.is_night(local) else self.unit_fee_fen


def schedule_in_force(schedules: list[FeeSchedule], at: datetime) -> FeeSchedule | None:
    """The version effective at ``at`` (latest effective_from <= at, then highest version);
    None when no version is in force yet: parking is free."""
    candidates = [s for s in schedules if s.effective_from is None or s.effective_from <= at]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda s: (s.effective_from or datetime.min.replace(tzinfo=at.tzinfo), s.version),
    )


def parked_minutes(entered: datetime, exited: datetime) -> int:
    """Started minutes between entry and exit (0 when the exit is not after the entry)."""
    if exited <= entered:
        return 0
    return -(-(exited - entered) // _MINUTE)


def _units(schedule: FeeSchedule, entered: datetime, exited: datetime) -> int:
    span = exited - entered
    if span <= timedelta(minutes=schedule.free_minutes):
        return 0
    unit = timedelta(minutes=schedule.unit_minutes)
    return -(-(span // _MICROSECOND) // (unit // _MICROSECOND))


def charge(
    schedule: FeeSchedule,
    entered: datetime,
    exited: datetime,
    tz: ZoneInfo,
    *,
    free_minutes: int = 0,
) -> int:
    """Fen owed for a stay, the first ``free_minutes`` (whole units) of it given by benefits."""
    units = _units(schedule, entered, exited)
    if units == 0 or free_minutes >= parked_minutes(entered, exited):
        return 0
    unit = timedelta(minutes=schedule.unit_minutes)
    per_day: dict[date, int] = defaultdict(int)
    for i in range(free_minutes // schedule.unit_minutes, units):
        local = (entered + i * unit).astimezone(tz)
        per_day[local.date()] += schedule.unit_fee(local)
    cap = schedule.daily_cap_fen
    return sum(min(fee, cap) if cap else fee for fee in per_day.values())


def calendar_days(entered: datetime, exited: datetime, tz: ZoneInfo) -> int:
    """How many calendar days (mall time zone) a stay touches."""
    first = entered.astimezone(tz).date()
    last = max(exited, entered).astimezone(tz).date()
    return (last - first).days + 1
