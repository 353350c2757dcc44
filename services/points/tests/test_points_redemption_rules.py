"""Redemption and adjustment rules, pure Python (no database)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from kit.errors import Conflict, InvalidInput
from points.domain.redemption import (
    Adjustment,
    Hold,
    HoldRequest,
    HoldState,
    Step,
    confirm_step,
    ensure_available,
    release_step,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
MEMBER = str(uuid.uuid4())


def hold(state: HoldState = HoldState.HELD, expires_in: timedelta = timedelta(minutes=5)) -> Hold:
    return Hold(
        "mall-1", str(uuid.uuid4()), MEMBER, 30, "coupon", "stock-1", "r-1", state, NOW + expires_in
    )


def test_a_held_hold_is_confirmed_or_released() -> None:
    assert confirm_step(hold(), NOW) is Step.APPLY
    assert release_step(hold(), NOW) is Step.APPLY


def test_settling_twice_the_same_way_is_a_no_op() -> None:
    assert confirm_step(hold(HoldState.CONFIRMED), NOW) is Step.DONE
    assert release_step(hold(HoldState.RELEASED), NOW) is Step.DONE


def test_a_timed_out_hold_behaves_as_released() -> None:
    late = hold(expires_in=timedelta(0))

    assert release_step(late, NOW) is Step.DONE
    with pytest.raises(Conflict) as caught:
        confirm_step(late, NOW)
    assert (caught.value.code, caught.value.details) == ("hold_not_held", {"state": "RELEASED"})


def test_the_other_settlement_is_refused() -> None:
    for step, state in ((confirm_step, HoldState.RELEASED), (release_step, HoldState.CONFIRMED)):
        with pytest.raises(Conflict) as caught:
            step(hold(state), NOW)
        assert caught.value.code == "hold_not_held"


def test_a_hold_answers_only_the_request_it_was_made_for() -> None:
    request = HoldRequest("mall-1", MEMBER, 30, "coupon", "stock-1", "r-1")

    assert hold().answers(request)
    assert not hold().answers(replace(request, points=31))


def test_points_beyond_the_available_ones_are_refused() -> None:
    ensure_available(30, 30)
    with pytest.raises(Conflict) as caught:
        ensure_available(29, 30)
    assert caught.value.code == "insufficient_points"


def test_only_removals_need_available_points() -> None:
    adding = Adjustment("mall-1", MEMBER, 500, "goodwill", "ops-alice", "a-1")
    removing = replace(adding, points=-10)

    adding.ensure_possible(-100)
    removing.ensure_possible(10)
    with pytest.raises(Conflict):
        removing.ensure_possible(9)


@pytest.mark.parametrize(
    ("points", "reward_kind", "code"),
    [(0, "coupon", "invalid_points"), (5, "cash", "missing_field"), (5, "", "missing_field")],
)
def test_a_malformed_hold_request_is_invalid(points: int, reward_kind: str, code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        HoldRequest("mall-1", MEMBER, points, reward_kind, "stock-1", "r-1")
    assert caught.value.code == code
