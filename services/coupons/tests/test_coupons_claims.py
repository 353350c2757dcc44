"""Claiming on real PostgreSQL: limits under concurrency, idempotent retries, the batch claim
(a scaled-down flash grab), windows and audiences."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from coupons.adapters import stocks as stocks_sql
from coupons.bootstrap import MIGRATIONS
from coupons.domain.claims import Channel, Claim, Outcome
from coupons.domain.stocks import Kind, NewStock, Stock, Terms, validate
from coupons.entrypoints.grpc_api import CouponsServicer
from coupons.service_layer.claims import claim_batch
from coupons.service_layer.sold_out import SoldOutMemory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit.directory import Directory
from kit.migrations import migrate
from mall.coupons.v1 import coupons_service_pb2 as pb
from mall_testing.plugin import FreshDatabase

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
async def pool(fresh_database: FreshDatabase) -> AsyncIterator[asyncpg.Pool]:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    async with asyncpg.create_pool(url, min_size=2, max_size=12) as pool:
        yield pool


def new_stock(mall_id: str, **overrides: object) -> NewStock:
    base = NewStock(
        mall_id=mall_id,
        tenant_id="coffee",
        terms=Terms(
            kind=Kind.FIXED_AMOUNT, title="满100减10", discount_fen=1000, threshold_fen=10000
        ),
        max_coupons=50,
        claim_starts_at=NOW - timedelta(hours=1),
        claim_ends_at=NOW + timedelta(days=1),
        request_id=str(uuid.uuid4()),
        valid_days=7,
    )
    return validate(replace(base, **overrides))  # type: ignore[arg-type]


async def create(pool: asyncpg.Pool, stock: NewStock) -> Stock:
    async with pool.acquire() as conn:
        created, _ = await stocks_sql.create(conn, stock)
    return created


def claim(stock: Stock, member_id: str | None = None, **more: object) -> Claim:
    return Claim(
        mall_id=stock.mall_id,
        stock_id=stock.stock_id,
        member_id=member_id or str(uuid.uuid4()),
        request_id=str(uuid.uuid4()),
        **more,  # type: ignore[arg-type]
    )


async def one(pool: asyncpg.Pool, c: Claim, memory: SoldOutMemory | None = None) -> Outcome:
    async with pool.acquire() as conn:
        (result,) = await claim_batch(conn, [c], memory=memory)
    return result.outcome


async def counts(pool: asyncpg.Pool, stock: Stock) -> tuple[int, int, int]:
    """(coupons, distinct members, the stock's counter)."""
    row = await pool.fetchrow(
        """SELECT count(*) AS n, count(DISTINCT member_id) AS members,
                  (SELECT claimed FROM stocks WHERE mall_id = $1 AND stock_id = $2) AS counter
             FROM coupons WHERE mall_id = $1 AND stock_id = $2""",
        stock.mall_id,
        stock.stock_id,
    )
    assert row is not None
    return row["n"], row["members"], row["counter"]


async def test_200_concurrent_claims_for_the_last_50_coupons_give_exactly_50(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    stock = await create(pool, new_stock(f"mall-{unique_id}", max_coupons=60))
    async with pool.acquire() as conn:  # 10 gone already: 50 left
        first = await claim_batch(conn, [claim(stock) for _ in range(10)])
    assert {r.outcome for r in first} == {Outcome.CLAIMED}

    outcomes = await asyncio.gather(*(one(pool, claim(stock)) for _ in range(200)))

    assert outcomes.count(Outcome.CLAIMED) == 50
    assert outcomes.count(Outcome.SOLD_OUT) == 150
    assert await counts(pool, stock) == (60, 60, 60)
    exhausted = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE subject = 'coupons.stock.exhausted' AND mall_id = $1",
        stock.mall_id,
    )
    assert exhausted == 1


async def test_one_shoppers_20_concurrent_claims_against_a_limit_of_1_give_one(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    stock = await create(pool, new_stock(f"mall-{unique_id}", max_per_member=1))
    member_id = str(uuid.uuid4())

    outcomes = await asyncio.gather(*(one(pool, claim(stock, member_id)) for _ in range(20)))

    assert outcomes.count(Outcome.CLAIMED) == 1
    assert outcomes.count(Outcome.LIMIT_REACHED) == 19
    assert await counts(pool, stock) == (1, 1, 1)


async def test_a_retried_claim_returns_the_same_coupon_even_once_sold_out(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    stock = await create(pool, new_stock(f"mall-{unique_id}", max_coupons=1))
    c = claim(stock)
    memory = SoldOutMemory()
    async with pool.acquire() as conn:
        (first,) = await claim_batch(conn, [c], memory=memory)
        assert await one(pool, claim(stock), memory) is Outcome.SOLD_OUT  # now known in memory
        (again,) = await claim_batch(conn, [c], memory=memory)
        together = await claim_batch(conn, [c, c], memory=memory)

    assert first.outcome is Outcome.CLAIMED
    assert first.coupon is not None
    assert memory.holders((stock.mall_id, stock.stock_id)) == frozenset(
        {(c.member_id, c.request_id)}
    )
    assert again.coupon == first.coupon
    assert [r.coupon for r in together] == [first.coupon, first.coupon]
    assert await counts(pool, stock) == (1, 1, 1)


async def test_batch_claim_2000_shoppers_for_200_coupons_first_come_first_served(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    stock = await create(pool, new_stock(f"mall-{unique_id}", max_coupons=200, max_per_member=1))
    shoppers = [str(uuid.uuid4()) for _ in range(2000)]
    memory = SoldOutMemory()
    batches = [
        [claim(stock, m) for m in shoppers[start : start + 100]] for start in range(0, 2000, 100)
    ]
    # Each shopper presses twice: the second press is in another, concurrent batch.
    batches += [
        [claim(stock, m) for m in shoppers[start : start + 100]] for start in range(0, 400, 100)
    ]

    async def run(batch: list[Claim]) -> list[Outcome]:
        async with pool.acquire() as conn:
            return [r.outcome for r in await claim_batch(conn, batch, memory=memory)]

    outcomes = [o for batch in await asyncio.gather(*(run(b) for b in batches)) for o in batch]

    assert outcomes.count(Outcome.CLAIMED) == 200
    assert set(outcomes) <= {Outcome.CLAIMED, Outcome.SOLD_OUT, Outcome.LIMIT_REACHED}
    assert await counts(pool, stock) == (200, 200, 200)


async def test_first_come_first_served_within_a_batch(pool: asyncpg.Pool, unique_id: str) -> None:
    stock = await create(pool, new_stock(f"mall-{unique_id}", max_coupons=3))
    batch = [claim(stock) for _ in range(5)]
    async with pool.acquire() as conn:
        results = await claim_batch(conn, batch)
    assert [r.outcome for r in results] == [Outcome.CLAIMED] * 3 + [Outcome.SOLD_OUT] * 2
    assert [r.reason for r in results[3:]] == ["stock_sold_out"] * 2


async def test_daily_limit_and_member_limit_above_one(pool: asyncpg.Pool, unique_id: str) -> None:
    stock = await create(
        pool, new_stock(f"mall-{unique_id}", max_coupons=100, max_per_day=4, max_per_member=2)
    )
    member_id = str(uuid.uuid4())
    async with pool.acquire() as conn:
        mine = await claim_batch(conn, [claim(stock, member_id) for _ in range(3)])
        others = await claim_batch(conn, [claim(stock) for _ in range(3)])
    assert [r.outcome for r in mine] == [Outcome.CLAIMED] * 2 + [Outcome.LIMIT_REACHED]
    assert [r.outcome for r in others] == [Outcome.CLAIMED] * 2 + [Outcome.SOLD_OUT]
    assert others[2].reason == "stock_sold_out_today"


async def test_window_pause_audience_and_points_refusals(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    later = await create(pool, new_stock(mall_id, claim_starts_at=NOW + timedelta(hours=1)))
    gold = await create(pool, new_stock(mall_id, audience_tiers=("gold",)))
    tagged = await create(pool, new_stock(mall_id, audience_tags=("new-mum", "vip")))
    priced = await create(pool, new_stock(mall_id, points_price=500))
    async with pool.acquire() as conn:
        results = await claim_batch(
            conn,
            [
                claim(later),
                claim(gold, tier_code="silver"),
                claim(gold, tier_code="gold"),
                claim(tagged, tags=("vip",)),
                claim(tagged, tags=("student",)),
                claim(priced),
                claim(priced, channel=Channel.POINTS, points_hold_id=str(uuid.uuid4())),
                Claim(mall_id, "no-such-stock", str(uuid.uuid4()), "r1"),
                Claim(mall_id, gold.stock_id, "not-a-uuid", "r1"),
            ],
        )
    assert [(r.outcome, r.reason) for r in results] == [
        (Outcome.NOT_CLAIMABLE, "claim_not_started"),
        (Outcome.NOT_ELIGIBLE, "tier_not_eligible"),
        (Outcome.CLAIMED, ""),
        (Outcome.CLAIMED, ""),
        (Outcome.NOT_ELIGIBLE, "tag_not_eligible"),
        (Outcome.NOT_ELIGIBLE, "points_required"),
        (Outcome.CLAIMED, ""),
        (Outcome.NOT_FOUND, "stock_not_found"),
        (Outcome.INVALID, "invalid_member_id"),
    ]


async def test_budget_caps_what_is_issued(pool: asyncpg.Pool, unique_id: str) -> None:
    stock = await create(pool, new_stock(f"mall-{unique_id}", max_coupons=100, budget_fen=3500))
    assert stock.issuable == 3
    async with pool.acquire() as conn:
        results = await claim_batch(conn, [claim(stock) for _ in range(5)])
    assert [r.outcome for r in results].count(Outcome.CLAIMED) == 3


async def test_validity_window_or_days_after_claim(pool: asyncpg.Pool, unique_id: str) -> None:
    mall_id = f"mall-{unique_id}"
    until = NOW + timedelta(days=30)
    windowed = await create(pool, new_stock(mall_id, valid_days=0, valid_until=until))
    relative = await create(pool, new_stock(mall_id, valid_days=7))
    async with pool.acquire() as conn:
        a, b = await claim_batch(conn, [claim(windowed), claim(relative)])
    assert a.coupon is not None
    assert b.coupon is not None
    assert a.coupon.valid_until == until
    assert b.coupon.valid_until - b.coupon.valid_from == timedelta(days=7)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    issuable=st.integers(1, 12),
    per_member=st.integers(0, 3),
    presses=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    batch=st.integers(1, 8),
)
async def test_limits_hold_for_any_presses_and_batching(
    pool: asyncpg.Pool, issuable: int, per_member: int, presses: list[int], batch: int
) -> None:
    """Whatever the presses (member index each) and however they are batched and raced, the
    stock never issues more than it holds, nobody more than the per-member limit, and coupons
    are given while any member may still take one (first come, first served)."""
    stock = await create(
        pool,
        new_stock(f"mall-{uuid.uuid4().hex[:12]}", max_coupons=issuable, max_per_member=per_member),
    )
    members = [str(uuid.uuid4()) for _ in range(6)]
    claims = [claim(stock, members[m]) for m in presses]
    batches = [claims[i : i + batch] for i in range(0, len(claims), batch)]

    async def run(b: list[Claim]) -> list[Outcome]:
        async with pool.acquire() as conn:
            return [r.outcome for r in await claim_batch(conn, b, memory=SoldOutMemory())]

    outcomes = [o for b in await asyncio.gather(*(run(b) for b in batches)) for o in b]

    per = {m: presses.count(i) for i, m in enumerate(members)}
    wanted = sum(min(n, per_member) if per_member else n for n in per.values())
    rows = await pool.fetch(
        "SELECT member_id::text AS m, count(*) AS n FROM coupons WHERE mall_id = $1 GROUP BY 1",
        stock.mall_id,
    )
    held = {r["m"]: r["n"] for r in rows}
    assert sum(held.values()) == outcomes.count(Outcome.CLAIMED) == min(issuable, wanted)
    if per_member:
        assert all(n <= per_member for n in held.values())
    assert set(outcomes) <= {Outcome.CLAIMED, Outcome.SOLD_OUT, Outcome.LIMIT_REACHED}


async def test_concurrent_claim_calls_share_batches_first_come_first_served(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    """Each gateway replica keeps several ClaimCoupons calls in flight during a grab: their
    claims go to the hot stock row together, not one transaction per call in turn."""
    stock = await create(pool, new_stock(unique_id, max_coupons=100, max_per_member=1))
    servicer = CouponsServicer(pool, Directory())
    calls = [
        pb.ClaimCouponsRequest(
            claims=[
                pb.ClaimCouponRequest(
                    mall_id=stock.mall_id,
                    stock_id=stock.stock_id,
                    member_id=str(uuid.uuid4()),
                    request_id=f"r-{n}-{i}",
                )
                for i in range(30)
            ]
        )
        for n in range(8)
    ]

    answers = await asyncio.gather(*(servicer.ClaimCoupons(call, None) for call in calls))

    outcomes = [[r.outcome for r in a.results] for a in answers]
    claimed = sum(row.count(pb.CLAIM_OUTCOME_CLAIMED) for row in outcomes)
    assert claimed == 100
    assert all(len(row) == 30 for row in outcomes)
    for row in outcomes:  # within a call, first come first served: no win after a sell-out
        first_refused = next(
            (i for i, o in enumerate(row) if o != pb.CLAIM_OUTCOME_CLAIMED), len(row)
        )
        assert set(row[first_refused:]) <= {pb.CLAIM_OUTCOME_SOLD_OUT}
    batches, items = servicer.claim_batching
    assert items == 240
    assert batches < len(calls)  # the 8 calls' claims in fewer transactions than calls
    assert await counts(pool, stock) == (100, 100, 100)
