"""Fee schedules and the price of a stay: pure domain, with property tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kit.errors import InvalidInput
from parking.domain.benefits import Benefit, BenefitKind, ParkingPolicy, price
from parking.domain.fees import (
    FeeSchedule,
    calendar_days,
    charge,
    parked_minutes,
    schedule_in_force,
)

SH = ZoneInfo("Asia/Shanghai")


def local(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SH)


# 15 free minutes, 5 yuan per started hour, 30 yuan a day at most.
HOURLY = FeeSchedule(free_minutes=15, unit_minutes=60, unit_fee_fen=500, daily_cap_fen=3000)
# 30-minute units, 3 yuan by day and 1 yuan at night (22:00-07:00), no cap.
NIGHTLY = FeeSchedule(
    free_minutes=0,
    unit_minutes=30,
    unit_fee_fen=300,
    night_start_minute=22 * 60,
    night_end_minute=7 * 60,
    night_unit_fee_fen=100,
)


def test_a_stay_exactly_on_the_free_minute_boundary_is_free() -> None:
    entered = local(2026, 11, 26, 10, 0)

    assert charge(HOURLY, entered, entered + timedelta(minutes=15), SH) == 0
    a_second_more = entered + timedelta(minutes=15, seconds=1)
    assert charge(HOURLY, entered, a_second_more, SH) == 500


def test_longer_stays_pay_per_started_unit_from_the_entry() -> None:
    entered = local(2026, 11, 26, 10, 0)

    assert charge(HOURLY, entered, entered + timedelta(minutes=60), SH) == 500
    assert charge(HOURLY, entered, entered + timedelta(minutes=61), SH) == 1000
    assert charge(HOURLY, entered, entered + timedelta(hours=3, minutes=1), SH) == 2000


def test_the_daily_cap_bounds_a_long_day() -> None:
    entered = local(2026, 11, 26, 8, 0)

    assert charge(HOURLY, entered, local(2026, 11, 26, 21, 0), SH) == 3000


def test_across_midnight_each_calendar_day_has_its_own_cap() -> None:
    # 18:00 -> 02:00: 6 units on the 26th (capped at 30 yuan), 2 units on the 27th.
    assert charge(HOURLY, local(2026, 11, 26, 18, 0), local(2026, 11, 27, 2, 0), SH) == 4000


def test_night_units_use_the_night_rate_by_their_start() -> None:
    # 21:00 -> 23:00: 21:00, 21:30 day (3 yuan), 22:00, 22:30 night (1 yuan).
    assert charge(NIGHTLY, local(2026, 11, 26, 21, 0), local(2026, 11, 26, 23, 0), SH) == 800
    # 06:00 -> 08:00: two night units, then two day units.
    assert charge(NIGHTLY, local(2026, 11, 27, 6, 0), local(2026, 11, 27, 8, 0), SH) == 800


def test_a_three_day_stay_pays_one_cap_per_calendar_day() -> None:
    entered = local(2026, 11, 24, 9, 0)
    exited = local(2026, 11, 26, 18, 0)

    assert calendar_days(entered, exited, SH) == 3
    assert charge(HOURLY, entered, exited, SH) == 3 * 3000


def test_days_follow_the_mall_time_zone_not_utc() -> None:
    # 23:30 -> 00:30 Shanghai time is 15:30 -> 16:30 UTC: one UTC day, two mall days.
    entered = local(2026, 11, 26, 23, 30)
    capped = FeeSchedule(free_minutes=0, unit_minutes=30, unit_fee_fen=2000, daily_cap_fen=2000)

    assert charge(capped, entered, entered + timedelta(hours=1), SH) == 4000
    assert charge(capped, entered, entered + timedelta(hours=1), ZoneInfo("UTC")) == 2000


def test_free_time_from_benefits_covers_whole_units_from_the_start() -> None:
    entered = local(2026, 11, 26, 10, 0)
    exited = entered + timedelta(hours=4, minutes=10)  # 5 started hours: 25 yuan

    assert charge(HOURLY, entered, exited, SH, free_minutes=180) == 1000
    assert charge(HOURLY, entered, exited, SH, free_minutes=300) == 0
    assert charge(HOURLY, entered, exited, SH, free_minutes=250) == 0  # covers the whole stay


def test_the_version_in_force_at_entry_prices_the_stay() -> None:
    v1 = FeeSchedule(15, 60, 500, effective_from=datetime(2026, 1, 1, tzinfo=UTC), version=1)
    v2 = FeeSchedule(15, 60, 800, effective_from=datetime(2026, 12, 1, tzinfo=UTC), version=2)

    assert schedule_in_force([v1, v2], datetime(2026, 11, 30, tzinfo=UTC)) == v1
    assert schedule_in_force([v1, v2], datetime(2026, 12, 1, tzinfo=UTC)) == v2
    assert schedule_in_force([v1, v2], datetime(2025, 6, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"unit_minutes": 20},
        {"free_minutes": -1},
        {"unit_fee_fen": -5},
        {"night_start_minute": 1440},
    ],
)
def test_a_malformed_schedule_is_refused(fields: dict[str, int]) -> None:
    values = {"free_minutes": 15, "unit_minutes": 60, "unit_fee_fen": 500} | fields
    with pytest.raises(InvalidInput) as caught:
        FeeSchedule(**values)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_schedule"


schedules = st.builds(
    FeeSchedule,
    free_minutes=st.integers(0, 120),
    unit_minutes=st.sampled_from([15, 30, 60]),
    unit_fee_fen=st.integers(0, 2000),
    daily_cap_fen=st.integers(0, 20000),
    night_start_minute=st.integers(0, 1439),
    night_end_minute=st.integers(0, 1439),
    night_unit_fee_fen=st.integers(0, 2000),
)
entries = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)
stays = st.integers(0, 4 * 24 * 60 * 60)  # up to 4 days, in seconds


@settings(max_examples=300, deadline=None)
@given(schedules, entries, stays, st.integers(0, 6 * 60 * 60))
def test_the_fee_never_drops_as_the_stay_grows(
    schedule: FeeSchedule, entered: datetime, seconds: int, more: int
) -> None:
    shorter = charge(schedule, entered, entered + timedelta(seconds=seconds), SH)
    longer = charge(schedule, entered, entered + timedelta(seconds=seconds + more), SH)

    assert longer >= shorter


@settings(max_examples=300, deadline=None)
@given(schedules, entries, stays)
def test_the_fee_never_exceeds_one_cap_per_calendar_day(
    schedule: FeeSchedule, entered: datetime, seconds: int
) -> None:
    exited = entered + timedelta(seconds=seconds)
    fee = charge(schedule, entered, exited, SH)

    if schedule.daily_cap_fen:
        assert fee <= schedule.daily_cap_fen * calendar_days(entered, exited, SH)
    top_rate = max(schedule.unit_fee_fen, schedule.night_unit_fee_fen)
    started_units = -(-parked_minutes(entered, exited) // schedule.unit_minutes)
    assert fee <= top_rate * started_units


@settings(max_examples=200, deadline=None)
@given(schedules, entries, stays, st.lists(st.integers(0, 600), max_size=4))
def test_benefits_never_raise_the_fee_and_add_up(
    schedule: FeeSchedule, entered: datetime, seconds: int, minutes: list[int]
) -> None:
    exited = entered + timedelta(seconds=seconds)
    benefits = [Benefit(BenefitKind.COUPON, "coupon", m) for m in minutes]

    priced = price(schedule, entered, exited, SH, benefits)

    assert priced.gross_fen == charge(schedule, entered, exited, SH)
    assert all(a.discount_fen >= 0 for a in priced.applied)
    assert 0 <= priced.payable_fen <= priced.gross_fen
    assert priced.payable_fen == charge(schedule, entered, exited, SH, free_minutes=sum(minutes))


def test_the_quote_shows_which_benefit_covered_what() -> None:
    policy = ParkingPolicy(
        tier_minutes={"gold": 120},
        spend_step_fen=10_000,
        spend_step_minutes=60,
        spend_max_minutes=240,
        points_per_hour=100,
        points_max_hours=3,
    )
    entered = local(2026, 11, 26, 10, 0)
    exited = entered + timedelta(hours=5, minutes=30)  # 6 started hours: 30 yuan (the cap)
    tier = policy.tier_benefit("gold")
    spend = policy.spend_benefit(25_000)  # 250 yuan: 2 hours
    assert tier is not None
    assert spend is not None

    priced = price(HOURLY, entered, exited, SH, [tier, spend], policy=policy, use_points=True)

    assert priced.gross_fen == 3000
    lines = [(a.benefit.kind, a.benefit.free_minutes, a.discount_fen) for a in priced.applied]
    assert lines == [
        (BenefitKind.TIER, 120, 1000),  # 6 units: 30 yuan; the last 4: 20 yuan
        (BenefitKind.SPEND, 120, 1000),
        (BenefitKind.POINTS, 120, 1000),
    ]
    assert priced.points == 200
    assert priced.payable_fen == 0
    assert priced.without_points().payable_fen == 1000


def test_spend_benefit_steps_and_caps() -> None:
    policy = ParkingPolicy(spend_step_fen=10_000, spend_step_minutes=60, spend_max_minutes=240)

    assert policy.spend_benefit(9_999) is None
    spend = policy.spend_benefit(10_000)
    assert spend is not None
    assert spend.free_minutes == 60
    capped = policy.spend_benefit(1_000_000)
    assert capped is not None
    assert capped.free_minutes == 240


def test_points_buy_only_the_hours_still_needed() -> None:
    policy = ParkingPolicy(points_per_hour=100, points_max_hours=5)
    entered = local(2026, 11, 26, 10, 0)

    priced = price(
        HOURLY, entered, entered + timedelta(minutes=100), SH, [], policy=policy, use_points=True
    )

    assert priced.points == 200
    assert priced.payable_fen == 0
    unused = price(
        HOURLY, entered, entered + timedelta(minutes=10), SH, [], policy=policy, use_points=True
    )
    assert unused.points == 0
    assert unused.applied == ()


def test_coupons_are_used_only_while_they_take_something_off() -> None:
    entered = local(2026, 11, 26, 10, 0)
    exited = entered + timedelta(minutes=100)  # 2 started hours: 10 yuan
    half_hours = [Benefit(BenefitKind.COUPON, f"c{i}", 30, coupon_id=f"c{i}") for i in range(6)]

    priced = price(HOURLY, entered, exited, SH, half_hours)

    # Two half hours make one hour; four cover the stay; the last two are kept.
    assert priced.coupon_ids == ["c0", "c1", "c2", "c3"]
    assert [a.discount_fen for a in priced.applied] == [0, 500, 0, 500]
    assert priced.payable_fen == 0
