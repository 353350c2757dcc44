"""The per-member per-day claim limit on real PostgreSQL: beside the stock-wide daily cap and the
per-member limit, under concurrent presses, per mall day, and across a member merge."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from coupons.adapters import stocks as stocks_sql
from coupons.bootstrap import MIGRATIONS
from coupons.domain.claims import Claim, Outcome
from coupons.domain.stocks import Kind, NewStock, Stock, Terms, validate
from coupons.entrypoints.merge_consumer import IDENTITY_MERGED, on_identity_merged
from coupons.entrypoints.translate import new_stock, stock_message
from coupons.service_layer.claims import Result, claim_batch
from eventbus.consumer import Delivery
from kit.errors import InvalidInput
from kit.migrations import migrate
from mall.coupons.v1 import coupons_pb2
from mall.coupons.v1 import coupons_service_pb2 as api
from mall.member.v1 import events_pb2 as member_events
from mall_testing.plugin import FreshDatabase

NOW = datetime.now(UTC)
MONDAY, TUESDAY = date(2026, 11, 23), date(2026, 11, 24)


@pytest.fixture(scope="module")
async def pool(fresh_database: FreshDatabase) -> AsyncIterator[asyncpg.Pool]:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    async with asyncpg.create_pool(url, min_size=2, max_size=12) as pool:
        yield pool


def terms(
    mall_id: str, max_per_member: int = 0, max_per_day: int = 0, max_per_member_per_day: int = 0
) -> NewStock:
    return validate(
        NewStock(
            mall_id=mall_id,
            tenant_id="coffee",
            terms=Terms(kind=Kind.FIXED_AMOUNT, title="每日领 满50减5", discount_fen=500),
            max_coupons=1000,
            claim_starts_at=NOW - timedelta(hours=1),
            claim_ends_at=NOW + timedelta(days=3),
            request_id=str(uuid.uuid4()),
            valid_days=1,
            max_per_member=max_per_member,
            max_per_day=max_per_day,
            max_per_member_per_day=max_per_member_per_day,
        )
    )


async def make_stock(pool: asyncpg.Pool, mall_id: str, **limits: int) -> Stock:
    async with pool.acquire() as conn:
        stock, _ = await stocks_sql.create(conn, terms(mall_id, **limits))
    return stock


def on(day: date) -> Callable[[str, datetime], date]:
    return lambda mall_id, now: day


async def press(pool: asyncpg.Pool, stock: Stock, member_id: str, day: date) -> Result:
    async with pool.acquire() as conn:
        (result,) = await claim_batch(
            conn,
            [Claim(stock.mall_id, stock.stock_id, member_id, str(uuid.uuid4()))],
            day_of=on(day),
        )
    return result


async def test_concurrent_presses_get_the_members_daily_share_and_the_stock_cap_holds(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    stock = await make_stock(pool, f"mall-{unique_id}", max_per_member_per_day=2, max_per_day=5)
    alice, bob, carol = (str(uuid.uuid4()) for _ in range(3))

    async def day_of_presses(day: date, *members: str) -> list[tuple[str, Result]]:
        pressing = [(m, press(pool, stock, m, day)) for m in members for _ in range(12)]
        results = await asyncio.gather(*(p for _, p in pressing))
        return [(m, r) for (m, _), r in zip(pressing, results, strict=True)]

    monday = await day_of_presses(MONDAY, alice, bob, carol)
    tuesday = await day_of_presses(TUESDAY, alice)

    won = Counter(m for m, r in monday if r.outcome is Outcome.CLAIMED)
    assert sum(won.values()) == 5  # the stock-wide daily cap, kept
    assert max(won.values()) == 2  # nobody above their daily share
    reasons = {r.reason for _, r in monday if r.outcome is not Outcome.CLAIMED}
    assert reasons <= {"member_daily_limit_reached", "stock_sold_out_today"}
    assert "member_daily_limit_reached" in reasons
    assert [r.outcome for _, r in tuesday].count(Outcome.CLAIMED) == 2  # a new day, a new share
    held = await pool.fetchval(
        """SELECT count(*) FROM coupons WHERE mall_id = $1 AND stock_id = $2
              AND member_id = $3::uuid""",
        stock.mall_id,
        stock.stock_id,
        alice,
    )
    assert held == won[alice] + 2


async def test_the_member_limit_still_caps_the_days_together(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    stock = await make_stock(pool, f"mall-{unique_id}", max_per_member_per_day=2, max_per_member=3)
    member = str(uuid.uuid4())
    monday = [await press(pool, stock, member, MONDAY) for _ in range(3)]
    tuesday = [await press(pool, stock, member, TUESDAY) for _ in range(2)]
    assert [r.reason or r.outcome.value for r in monday + tuesday] == [
        "claimed",
        "claimed",
        "member_daily_limit_reached",
        "claimed",
        "member_limit_reached",
    ]


async def test_a_merged_members_claims_today_count_for_the_survivor(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    stock = await make_stock(pool, f"mall-{unique_id}", max_per_member_per_day=2)
    survivor, absorbed = str(uuid.uuid4()), str(uuid.uuid4())
    await press(pool, stock, survivor, MONDAY)
    await press(pool, stock, absorbed, MONDAY)
    msg = member_events.IdentityMerged(
        event_id=str(uuid.uuid4()),
        mall_id=stock.mall_id,
        survivor_member_id=survivor,
        merged_member_id=absorbed,
    )
    async with pool.acquire() as conn, conn.transaction():
        await on_identity_merged(
            conn, [Delivery(msg.event_id, IDENTITY_MERGED, msg.SerializeToString())]
        )
    refused = await press(pool, stock, survivor, MONDAY)
    assert (refused.outcome, refused.reason) == (
        Outcome.LIMIT_REACHED,
        "member_daily_limit_reached",
    )
    assert (await press(pool, stock, survivor, TUESDAY)).outcome is Outcome.CLAIMED


def test_the_limit_is_validated_and_carried_by_the_contract(unique_id: str) -> None:
    with pytest.raises(InvalidInput, match="cannot exceed"):
        terms(f"mall-{unique_id}", max_per_member=1, max_per_member_per_day=2)
    with pytest.raises(InvalidInput):
        terms(f"mall-{unique_id}", max_per_member_per_day=-1)
    request = api.CreateStockRequest(
        request_id=str(uuid.uuid4()),
        stock=stock_message(
            Stock(
                mall_id=f"mall-{unique_id}",
                stock_id="s-1",
                tenant_id="coffee",
                terms=Terms(kind=Kind.FIXED_AMOUNT, title="t", discount_fen=500),
                max_coupons=10,
                budget_fen=0,
                issuable=10,
                max_per_member=0,
                max_per_day=0,
                audience_tiers=(),
                audience_tags=(),
                claim_starts_at=NOW,
                claim_ends_at=NOW + timedelta(days=1),
                valid_from=None,
                valid_until=None,
                valid_days=1,
                points_price=0,
                max_per_member_per_day=4,
            ),
            NOW,
        ),
    )
    assert request.stock.max_per_member_per_day == 4
    assert new_stock(request).max_per_member_per_day == 4
    assert coupons_pb2.Stock.DESCRIPTOR.fields_by_name["max_per_member_per_day"].number == 29
