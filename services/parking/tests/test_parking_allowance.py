"""The spend steps a shopper is shown (pure domain): what the day's spend gives, what the
next step needs, and what one payment added."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from parking.domain.benefits import ParkingPolicy

policies = st.builds(
    ParkingPolicy,
    spend_step_fen=st.integers(0, 50_000),
    spend_step_minutes=st.integers(0, 240),
    spend_max_minutes=st.integers(0, 600),
)


@given(policy=policies, spend=st.integers(0, 1_000_000))
def test_the_next_step_is_exactly_what_it_takes_to_get_more_time(
    policy: ParkingPolicy, spend: int
) -> None:
    needed, minutes = policy.next_spend_step(spend)

    if needed == 0:  # no further step gives more time, however much is spent
        assert minutes == 0
        assert policy.spend_minutes(spend + 10_000_000) == policy.spend_minutes(spend)
    else:
        assert minutes == policy.spend_minutes(spend + needed) > policy.spend_minutes(spend)
        assert policy.spend_minutes(spend + needed - 1) == policy.spend_minutes(spend)


def test_the_day_is_capped_and_steps_are_whole() -> None:
    policy = ParkingPolicy(spend_step_fen=10_000, spend_step_minutes=60, spend_max_minutes=90)

    assert [policy.spend_minutes(f) for f in (0, 9_999, 10_000, 19_999, 20_000, 90_000)] == [
        0,
        0,
        60,
        60,
        90,
        90,
    ]
    assert policy.next_spend_step(15_000) == (5_000, 90)
    assert policy.next_spend_step(20_000) == (0, 0)
    assert ParkingPolicy().next_spend_step(50_000) == (0, 0)  # no spend benefit at all
