"""Campaigns, budgets, daily caps and rounding: in the domain and on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kit.errors import InvalidInput
from kit.migrations import migrate
from mall_testing.plugin import FreshDatabase
from points.adapters import rules
from points.bootstrap import MIGRATIONS
from points.domain.model import AttributedPayment, Credit, plan_credits
from points.domain.rules import EarningRule, Rounding, RuleBook
from points.service_layer.credits import credit_payments

MALL = "demo-mall"
MEMBER = str(uuid.uuid4())
# 14:30 in Shanghai; 16:30 UTC is already the next mall day.
PAID = datetime(2025, 11, 26, 6, 30, tzinfo=UTC)


def paid(amount_fen: int, **overrides: Any) -> AttributedPayment:
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "mall_id": MALL,
        "member_id": MEMBER,
        "transaction_id": f"4200{uuid.uuid4().hex[:20]}",
        "tenant_id": "coffee-corner",
        "amount_fen": amount_fen,
        "paid_at": PAID,
    }
    return AttributedPayment(**(fields | overrides))


def rule(rule_id: str, points_per_unit: int = 1, **overrides: Any) -> EarningRule:
    fields: dict[str, Any] = {
        "mall_id": MALL,
        "rule_id": rule_id,
        "spend_unit_fen": 100,
        "points_per_unit": points_per_unit,
        "version": 1,
    }
    return EarningRule(**(fields | overrides))


def plan(book: RuleBook, *payments: AttributedPayment, **kwargs: Any) -> list[Credit]:
    opening = {(p.mall_id, p.member_id): 0 for p in payments}
    return plan_credits(list(payments), opening, set(), book, **kwargs)


# -- domain --------------------------------------------------------------------------------


def test_a_multiplier_campaign_scales_the_base_rule() -> None:
    book = RuleBook([rule("base", 2), rule("double", multiplier_percent=200)])
    [credit] = plan(book, paid(12_345))
    assert (credit.points, credit.rule_version) == (492, "base@1+double@1")
    assert (credit.campaign_id, credit.campaign_points) == ("double", 246)


def test_a_bonus_campaign_adds_fixed_points_and_stacks_on_the_base_rate() -> None:
    book = RuleBook([rule("bonus", bonus_points=50)])
    [credit] = plan(book, paid(1_000))
    assert (credit.points, credit.rule_version) == (60, "base-1+bonus@1")


def test_a_campaign_outside_its_window_or_minimum_adds_nothing() -> None:
    start = PAID + timedelta(days=1)
    book = RuleBook(
        [
            rule("later", multiplier_percent=300, starts_at=start),
            rule("big", bonus_points=100, min_amount_fen=50_000),
        ]
    )
    [credit] = plan(book, paid(1_000))
    assert (credit.points, credit.rule_version, credit.campaign_id) == (10, "base-1", "")


def test_the_campaign_of_highest_priority_is_the_one_stacking() -> None:
    book = RuleBook(
        [rule("x2", multiplier_percent=200, priority=1), rule("x3", multiplier_percent=300)]
    )
    [credit] = plan(book, paid(1_000))
    assert (credit.points, credit.rule_version) == (20, "base-1+x2@1")


def test_a_budget_runs_out_across_payments_the_last_one_getting_the_remainder() -> None:
    book = RuleBook([rule("bonus", bonus_points=40, budget_points=100)])
    credits = plan(book, paid(1_000), paid(1_000), paid(1_000), paid(1_000))
    assert [c.points for c in credits] == [50, 50, 30, 10]
    assert [c.campaign_points for c in credits] == [40, 40, 20, 0]
    assert credits[-1].rule_version == "base-1"
    # what was spent before (another transaction) counts
    [late] = plan(book, paid(1_000), budgets_spent={(MALL, "bonus"): 95})
    assert late.campaign_points == 5


def test_the_daily_cap_counts_the_mall_day_and_trims_the_campaign_first() -> None:
    book = RuleBook([rule("base", 1, daily_cap_points=100), rule("x2", multiplier_percent=200)])
    next_day = PAID + timedelta(hours=10)  # 00:30 the next day in Shanghai
    credits = plan(book, paid(4_000), paid(4_000), paid(4_000), paid(4_000, paid_at=next_day))
    assert [c.points for c in credits] == [80, 20, 0, 80]
    assert [c.campaign_points for c in credits] == [40, 0, 0, 40]
    [capped] = plan(book, paid(4_000), earned_on_day={(MALL, MEMBER, PAID.date()): 90})
    assert capped.points == 10


@pytest.mark.parametrize(
    ("rounding", "amount", "points"),
    [
        (Rounding.DOWN, 249, 2),
        (Rounding.DOWN, 250, 2),
        (Rounding.HALF_UP, 249, 2),
        (Rounding.HALF_UP, 250, 3),
        (Rounding.UP, 201, 3),
        (Rounding.UP, 200, 2),
    ],
)
def test_rounding_modes_count_units_of_spend(rounding: Rounding, amount: int, points: int) -> None:
    book = RuleBook([rule("base", 1, rounding=rounding)])
    assert plan(book, paid(amount))[0].points == points


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"multiplier_percent": 50}, "invalid_multiplier"),
        ({"bonus_points": -1}, "invalid_bonus"),
        ({"budget_points": -1}, "invalid_budget"),
        ({"daily_cap_points": -1}, "invalid_daily_cap"),
    ],
)
def test_invalid_campaign_fields_are_refused(overrides: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        rule("r", **overrides).validate()
    assert info.value.code == code


@given(
    amounts=st.lists(st.integers(min_value=1, max_value=10_000_000), min_size=1, max_size=12),
    per_unit=st.integers(min_value=0, max_value=20),
    multiplier=st.sampled_from([0, 100, 150, 200, 1000]),
    bonus=st.integers(min_value=0, max_value=500),
    budget=st.integers(min_value=0, max_value=5_000),
    cap=st.integers(min_value=0, max_value=20_000),
    rounding=st.sampled_from(list(Rounding)),
)
def test_credits_are_never_negative_nor_above_the_cap_nor_the_budget(
    amounts: list[int],
    per_unit: int,
    multiplier: int,
    bonus: int,
    budget: int,
    cap: int,
    rounding: Rounding,
) -> None:
    book = RuleBook(
        [
            rule("base", per_unit, rounding=rounding, daily_cap_points=cap),
            rule("camp", multiplier_percent=multiplier, bonus_points=bonus, budget_points=budget),
        ]
    )
    credits = plan(book, *(paid(a) for a in amounts))
    assert all(c.points >= 0 and c.campaign_points >= 0 for c in credits)
    if cap:
        assert sum(c.points for c in credits) <= cap
    if budget and (multiplier or bonus):
        assert sum(c.campaign_points for c in credits) <= budget


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def database_url(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("points")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def put(conn: asyncpg.Connection, *new: EarningRule) -> None:
    async with conn.transaction():
        for r in new:
            await rules.put_rule(conn, r, PAID - timedelta(days=1))


async def credit(conn: asyncpg.Connection, *payments: AttributedPayment) -> list[Credit]:
    async with conn.transaction():
        return await credit_payments(conn, [(p, {}) for p in payments])


def in_mall(mall_id: str, amount_fen: int, **overrides: Any) -> AttributedPayment:
    return paid(amount_fen, mall_id=mall_id, member_id=str(uuid.uuid4()), **overrides)


async def test_campaign_fields_are_stored_and_read_back(conn: asyncpg.Connection) -> None:
    mall = f"mall-{uuid.uuid4().hex[:8]}"
    camp = rule("c", mall_id=mall, multiplier_percent=150, bonus_points=5, budget_points=9)
    base = rule("b", mall_id=mall, daily_cap_points=7, rounding=Rounding.HALF_UP)
    await put(conn, camp, base)
    stored = {r.rule_id: r for r in await rules.current_rules(conn, mall, after="", limit=10)}
    assert (stored["c"].multiplier_percent, stored["c"].bonus_points) == (150, 5)
    assert stored["c"].budget_points == 9
    assert (stored["b"].daily_cap_points, stored["b"].rounding) == (7, Rounding.HALF_UP)


async def test_a_budget_is_spent_across_payments_and_transactions(
    conn: asyncpg.Connection,
) -> None:
    mall = f"mall-{uuid.uuid4().hex[:8]}"
    await put(conn, rule("bonus", mall_id=mall, bonus_points=40, budget_points=100))
    first = await credit(conn, in_mall(mall, 1_000), in_mall(mall, 1_000))
    [third] = await credit(conn, in_mall(mall, 1_000))
    [fourth] = await credit(conn, in_mall(mall, 1_000))
    assert [c.points for c in [*first, third, fourth]] == [50, 50, 30, 10]
    spent = await conn.fetchval(
        "SELECT spent_points FROM rule_budgets WHERE mall_id = $1 AND rule_id = 'bonus'", mall
    )
    assert spent == 100


async def test_two_concurrent_transactions_never_overspend_a_budget(
    conn: asyncpg.Connection, database_url: str
) -> None:
    mall = f"mall-{uuid.uuid4().hex[:8]}"
    await put(conn, rule("bonus", mall_id=mall, bonus_points=100, budget_points=150))
    other = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            [a] = await credit_payments(conn, [(in_mall(mall, 1_000), {})])
            second = asyncio.create_task(credit(other, in_mall(mall, 1_000)))
            await asyncio.sleep(0.3)
            assert not second.done()  # waits on the budget's row lock
        [b] = await second
    finally:
        await other.close()
    assert (a.campaign_points, b.campaign_points) == (100, 50)


async def test_the_daily_cap_counts_what_the_ledger_holds_for_that_mall_day(
    conn: asyncpg.Connection,
) -> None:
    mall = f"mall-{uuid.uuid4().hex[:8]}"
    await put(conn, rule("base", mall_id=mall, daily_cap_points=100))
    member = str(uuid.uuid4())
    [one] = await credit(conn, paid(6_000, mall_id=mall, member_id=member))
    [two] = await credit(conn, paid(6_000, mall_id=mall, member_id=member))
    [three] = await credit(
        conn, paid(6_000, mall_id=mall, member_id=member, paid_at=PAID + timedelta(hours=10))
    )
    assert [one.points, two.points, three.points] == [60, 40, 60]
    balance = await conn.fetchval(
        "SELECT balance FROM accounts WHERE mall_id = $1 AND member_id = $2",
        mall,
        uuid.UUID(member),
    )
    assert balance == 160


def test_campaign_fields_cross_the_wire_both_ways() -> None:
    from mall.points.v1 import points_pb2
    from points.entrypoints.grpc_admin import _rule_from, _rule_to

    msg = points_pb2.EarningRule(
        mall_id=MALL,
        rule_id="c",
        spend_unit_fen=100,
        points_per_unit=1,
        multiplier_percent=200,
        bonus_points=5,
        budget_points=1_000,
        daily_cap_points=300,
        rounding=points_pb2.ROUNDING_UP,
    )
    domain = _rule_from(msg)
    assert (domain.multiplier_percent, domain.rounding) == (200, Rounding.UP)
    back = _rule_to(domain)
    assert (back.bonus_points, back.budget_points, back.daily_cap_points) == (5, 1_000, 300)
    assert (
        _rule_from(points_pb2.EarningRule(mall_id=MALL, rule_id="d", spend_unit_fen=1)).rounding
        is Rounding.DOWN
    )
