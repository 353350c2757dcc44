"""Domain units: earning rules per tenant, tier, source and window, versioned by time."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kit.errors import InvalidInput
from points.domain.model import AttributedPayment, plan_credits
from points.domain.rules import EarningRule, RuleBook

MALL = "demo-mall"
PAID = datetime(2025, 11, 26, 6, 30, tzinfo=UTC)
EARLIER = PAID - timedelta(days=30)


def paid(amount_fen: int, **overrides: Any) -> AttributedPayment:
    fields: dict[str, Any] = {
        "event_id": "evt-1",
        "mall_id": MALL,
        "member_id": str(uuid.UUID(int=1)),
        "transaction_id": f"4200{uuid.uuid4().hex[:20]}",
        "tenant_id": "coffee-corner",
        "amount_fen": amount_fen,
        "paid_at": PAID,
        "tier_code": "silver",
        "source": "PAYMENT_SOURCE_WECHAT_PAY",
    }
    return AttributedPayment(**(fields | overrides))


def rule(rule_id: str, points_per_unit: int = 1, **overrides: Any) -> EarningRule:
    fields: dict[str, Any] = {
        "mall_id": MALL,
        "rule_id": rule_id,
        "spend_unit_fen": 100,
        "points_per_unit": points_per_unit,
        "version": 1,
        "recorded_at": EARLIER,
    }
    return EarningRule(**(fields | overrides))


def test_a_mall_without_rules_earns_the_base_rate() -> None:
    assert RuleBook([]).earn(paid(12_345)) == (123, "base-1")


def test_a_tenant_rule_sets_that_tenants_rate() -> None:
    book = RuleBook([rule("all", 1), rule("jewellery", 3, tenant_id="gold-shop", priority=10)])

    assert book.earn(paid(12_345, tenant_id="gold-shop")) == (369, "jewellery@1")
    assert book.earn(paid(12_345)) == (123, "all@1")


def test_an_excluded_tenant_earns_nothing() -> None:
    book = RuleBook([rule("no-supermarket", 0, tenant_id="supermarket", priority=10)])

    assert book.earn(paid(50_000, tenant_id="supermarket")) == (0, "no-supermarket@1")
    assert book.earn(paid(50_000)) == (500, "base-1")


def test_a_tier_rule_multiplies_that_tiers_rate() -> None:
    book = RuleBook([rule("base", 1), rule("gold-double", 2, tier_code="gold", priority=5)])

    assert book.earn(paid(10_000, tier_code="gold")) == (200, "gold-double@1")
    assert book.earn(paid(10_000, tier_code="silver")) == (100, "base@1")


def test_a_campaign_applies_only_inside_its_window() -> None:
    start, end = PAID - timedelta(hours=1), PAID + timedelta(hours=1)
    campaign = rule("double-11", 5, starts_at=start, ends_at=end, priority=100)
    book = RuleBook([rule("base", 1), campaign])

    assert book.earn(paid(1_000)) == (50, "double-11@1")
    assert book.earn(paid(1_000, paid_at=end)) == (10, "base@1")
    just_before = start - timedelta(seconds=1)
    assert book.earn(paid(1_000, paid_at=just_before)) == (10, "base@1")


def test_source_and_minimum_amount_narrow_a_rule() -> None:
    book = RuleBook([rule("pos", 2, sources=frozenset({"PAYMENT_SOURCE_POS_CASH"}))])
    assert book.earn(paid(1_000)) == (10, "base-1")
    assert book.earn(paid(1_000, source="PAYMENT_SOURCE_POS_CASH")) == (20, "pos@1")

    big = RuleBook([rule("big", 2, min_amount_fen=10_000)])
    assert big.earn(paid(9_999)) == (0, "big@1")
    assert big.earn(paid(10_000)) == (200, "big@1")


def test_the_highest_priority_wins_and_ties_are_stable() -> None:
    book = RuleBook([rule("b", 2, priority=1), rule("a", 3, priority=1), rule("c", 9)])

    assert book.earn(paid(100)) == (3, "a@1")


def test_a_payment_made_before_a_new_version_earns_by_the_old_one() -> None:
    v1 = rule("base", 1, version=1, recorded_at=EARLIER)
    v2 = replace(v1, points_per_unit=4, version=2, recorded_at=PAID)
    book = RuleBook([v2, v1])

    just_before = PAID - timedelta(seconds=1)
    assert book.earn(paid(1_000, paid_at=just_before)) == (10, "base@1")
    assert book.earn(paid(1_000, paid_at=PAID)) == (40, "base@2")
    assert book.earn(paid(1_000, paid_at=EARLIER - timedelta(days=1))) == (10, "base-1")


def test_other_malls_rules_do_not_apply() -> None:
    book = RuleBook([rule("nothing", 0, mall_id="other-mall")])

    assert book.earn(paid(1_000)) == (10, "base-1")


def test_plan_credits_records_the_rule_version_and_skips_repeats() -> None:
    book = RuleBook([rule("triple", 3)])
    p = paid(1_000)

    first, repeat = plan_credits([p, p], {(MALL, p.member_id): 5}, set(), book)

    assert (first.points, first.balance_after, first.rule_version, first.applied) == (
        30,
        35,
        "triple@1",
        True,
    )
    assert (repeat.points, repeat.balance_after, repeat.applied) == (0, 35, False)


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"mall_id": ""}, "missing_field"),
        ({"rule_id": ""}, "invalid_rule_id"),
        ({"rule_id": "x" * 65}, "invalid_rule_id"),
        ({"spend_unit_fen": 0}, "invalid_spend_unit"),
        ({"points_per_unit": -1}, "invalid_points_per_unit"),
        ({"min_amount_fen": -1}, "invalid_min_amount"),
        ({"starts_at": PAID, "ends_at": PAID}, "invalid_window"),
    ],
)
def test_invalid_rules_are_refused_with_stable_codes(overrides: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        replace(rule("r"), **overrides).validate()
    assert refused.value.code == code


rules_strategy = st.lists(
    st.builds(
        rule,
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(0, 50),
        tenant_id=st.sampled_from(["", "coffee-corner", "gold-shop"]),
        tier_code=st.sampled_from(["", "silver", "gold"]),
        spend_unit_fen=st.integers(1, 10_000),
        min_amount_fen=st.integers(0, 100_000),
        priority=st.integers(-5, 5),
        version=st.integers(1, 3),
        recorded_at=st.sampled_from([EARLIER, PAID, PAID + timedelta(days=1)]),
    ),
    max_size=8,
)


@given(rules_strategy, st.integers(1, 10_000_000_000), st.sampled_from(["silver", "gold"]))
def test_points_are_never_negative_nor_above_the_richest_rule(
    versions: list[EarningRule], amount_fen: int, tier_code: str
) -> None:
    payment = paid(amount_fen, tier_code=tier_code)

    points, version = RuleBook(versions).earn(payment)

    ceiling = max([amount_fen // 100] + [r.points_for(payment) for r in versions])
    assert 0 <= points <= ceiling
    assert version == "base-1" or any(r.label == version for r in versions)
