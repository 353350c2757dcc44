"""Domain units: what a payment earns, and which payments can earn at all."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kit.errors import ErrorKind, InvalidInput
from points.domain.model import (
    AttributedPayment,
    AttributedRefund,
    BaseRate,
    plan_credits,
    points_to_reverse,
)

MAX_FEN = 10_000_000_000  # the largest amount the gateway accepts (¥100 million)


def paid(amount_fen: int, **overrides: Any) -> AttributedPayment:
    fields: dict[str, Any] = {
        "event_id": "evt-1",
        "mall_id": "demo-mall",
        "member_id": str(uuid.UUID(int=1)),
        "transaction_id": "4200000000000000000000000001",
        "tenant_id": "coffee-corner",
        "amount_fen": amount_fen,
        "paid_at": datetime(2025, 11, 26, 6, 30, tzinfo=UTC),
    }
    return AttributedPayment(**(fields | overrides))


@pytest.mark.parametrize(
    ("amount_fen", "points"),
    [(12_345, 123), (99, 0), (100, 1), (199, 1), (200, 2), (1, 0), (MAX_FEN, MAX_FEN // 100)],
)
def test_the_base_rate_is_one_point_per_whole_yuan(amount_fen: int, points: int) -> None:
    assert BaseRate().points_for(paid(amount_fen)) == points


def test_a_richer_rate_multiplies_whole_yuan() -> None:
    assert BaseRate(points_per_yuan=3, version="triple").points_for(paid(12_345)) == 369


@given(st.integers(min_value=1, max_value=MAX_FEN))
def test_points_are_the_whole_yuan_of_any_amount(amount_fen: int) -> None:
    assert BaseRate().points_for(paid(amount_fen)) == amount_fen // 100


@given(st.integers(min_value=1, max_value=MAX_FEN), st.integers(min_value=0, max_value=MAX_FEN))
def test_paying_more_never_earns_fewer_points(amount_fen: int, more: int) -> None:
    rate = BaseRate()
    assert rate.points_for(paid(amount_fen + more)) >= rate.points_for(paid(amount_fen))


@given(st.integers(min_value=1, max_value=MAX_FEN), st.integers(min_value=1, max_value=MAX_FEN))
def test_splitting_a_payment_never_earns_more(first: int, second: int) -> None:
    """Fractions are dropped per payment, so two payments earn at most what one would."""
    rate = BaseRate()
    whole = rate.points_for(paid(first + second))
    split = rate.points_for(paid(first)) + rate.points_for(paid(second))
    assert whole - 1 <= split <= whole


@pytest.mark.parametrize("field", ["mall_id", "member_id", "transaction_id"])
def test_a_payment_without_its_keys_is_refused(field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        paid(1_000, **{field: ""})

    assert caught.value.code == "payment_incomplete"
    assert caught.value.kind is ErrorKind.INVALID


@pytest.mark.parametrize("amount_fen", [0, -1, -10_000])
def test_a_non_positive_amount_is_refused(amount_fen: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        paid(amount_fen)

    assert caught.value.code == "amount_not_positive"


@pytest.mark.parametrize("field", ["event_id", "tenant_id", "appid", "openid"])
def test_optional_fields_may_be_empty(field: str) -> None:
    assert getattr(paid(1_000, **{field: ""}), field) == ""


# -- planning a batch -----------------------------------------------------------------------


def test_a_batch_runs_each_accounts_balance_through_its_payments() -> None:
    alice, bob = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
    batch = [
        paid(1_000, member_id=alice, transaction_id="t1"),
        paid(2_000, member_id=bob, transaction_id="t2"),
        paid(550, member_id=alice, transaction_id="t3"),
    ]
    opening = {("demo-mall", alice): 100, ("demo-mall", bob): 0}

    credits = plan_credits(batch, opening, set(), BaseRate())

    assert [(c.points, c.balance_after, c.applied) for c in credits] == [
        (10, 110, True),
        (20, 20, True),
        (5, 115, True),
    ]
    assert opening == {("demo-mall", alice): 100, ("demo-mall", bob): 0}  # not mutated


def test_a_payment_credited_before_or_earlier_in_the_batch_is_not_applied() -> None:
    member = str(uuid.UUID(int=1))
    batch = [
        paid(1_000, member_id=member, transaction_id="old"),
        paid(2_000, member_id=member, transaction_id="new"),
        paid(2_000, member_id=member, transaction_id="new"),
    ]

    credits = plan_credits(batch, {("demo-mall", member): 10}, {("demo-mall", "old")}, BaseRate())

    assert [(c.points, c.balance_after, c.applied) for c in credits] == [
        (0, 10, False),
        (20, 30, True),
        (0, 30, False),
    ]


def test_the_same_transaction_id_in_another_mall_is_another_payment() -> None:
    member = str(uuid.UUID(int=1))
    batch = [paid(1_000, member_id=member), paid(1_000, member_id=member, mall_id="other-mall")]
    opening = {("demo-mall", member): 0, ("other-mall", member): 0}

    credits = plan_credits(batch, opening, {("third-mall", batch[0].transaction_id)}, BaseRate())

    assert [c.applied for c in credits] == [True, True]


def test_a_payment_under_one_yuan_is_applied_with_zero_points() -> None:
    member = str(uuid.UUID(int=1))

    [credit] = plan_credits(
        [paid(50, member_id=member)], {("demo-mall", member): 7}, set(), BaseRate()
    )

    assert (credit.points, credit.balance_after, credit.applied) == (0, 7, True)


@given(st.lists(st.integers(min_value=1, max_value=10_000_000), max_size=30))
def test_a_batch_ends_on_the_opening_balance_plus_what_it_earns(amounts: list[int]) -> None:
    member = str(uuid.UUID(int=1))
    batch = [paid(a, member_id=member, transaction_id=f"t{i}") for i, a in enumerate(amounts)]

    credits = plan_credits(batch, {("demo-mall", member): 5}, set(), BaseRate())

    closing = credits[-1].balance_after if credits else 5
    assert closing == 5 + sum(a // 100 for a in amounts)
    assert all(c.applied for c in credits)


# -- reversals ------------------------------------------------------------------------------


@given(
    credited=st.integers(min_value=0, max_value=1_000_000),
    parts=st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=8),
)
def test_partial_refunds_adding_up_to_the_payment_reverse_exactly_the_credit(
    credited: int, parts: list[int]
) -> None:
    pay = sum(parts)
    refunded = reversed_total = 0
    for part in parts:
        step = points_to_reverse(
            credited=credited,
            pay_amount_fen=pay,
            refunded_before_fen=refunded,
            reversed_before=reversed_total,
            refund_amount_fen=part,
        )
        assert step >= 0
        refunded += part
        reversed_total += step
        assert reversed_total <= credited * refunded // pay  # never more than the share
    assert reversed_total == credited


def test_a_refund_of_more_than_was_paid_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        AttributedRefund(
            event_id="e",
            mall_id="m",
            member_id="u",
            transaction_id="t",
            refund_id="r",
            refund_amount_fen=101,
            pay_amount_fen=100,
        )
    assert caught.value.code == "invalid_refund_amount"
