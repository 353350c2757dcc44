"""Coupons follow member merges (member.identity.merged) on real PostgreSQL and NATS: the
absorbed member's coupons, claim keys and per-member counters move to the survivor, once; a
claim racing the merge lands on the survivor; the survivor's per-member limit counts both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import nats
import pytest
from coupons.adapters import stocks as stocks_sql
from coupons.bootstrap import MIGRATIONS, bootstrap
from coupons.config import Settings
from coupons.domain.claims import Channel, Claim, Outcome
from coupons.domain.stocks import Kind, NewStock, Stock, Terms
from coupons.entrypoints.merge_consumer import IDENTITY_MERGED, on_identity_merged
from coupons.service_layer.claims import Result, claim_batch
from eventbus.consumer import Delivery
from kit.cli import running
from kit.db import Connection
from kit.migrations import migrate
from mall.member.v1 import events_pb2 as member_events
from mall_testing.plugin import FreshDatabase

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
async def url(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture(scope="module")
async def pool(url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(url, min_size=2, max_size=8) as pool:
        yield pool


async def make_stock(pool: asyncpg.Pool, mall_id: str, max_per_member: int = 0) -> Stock:
    async with pool.acquire() as conn:
        stock, _ = await stocks_sql.create(
            conn,
            NewStock(
                mall_id=mall_id,
                tenant_id="coffee",
                terms=Terms(kind=Kind.FIXED_AMOUNT, title="满50减10", discount_fen=1000),
                max_coupons=1000,
                max_per_member=max_per_member,
                claim_starts_at=NOW - timedelta(hours=1),
                claim_ends_at=NOW + timedelta(days=1),
                request_id=str(uuid.uuid4()),
                valid_days=7,
            ),
        )
    return stock


async def claim(pool: asyncpg.Pool, stock: Stock, member_id: str, request_id: str = "") -> Result:
    async with pool.acquire() as conn:
        (result,) = await claim_batch(
            conn,
            [Claim(stock.mall_id, stock.stock_id, member_id, request_id or str(uuid.uuid4()))],
        )
    return result


def merged_event(mall_id: str, survivor: str, absorbed: str) -> Delivery:
    msg = member_events.IdentityMerged(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        survivor_member_id=survivor,
        merged_member_id=absorbed,
        merge_request_id=f"merge-{uuid.uuid4().hex[:8]}",
    )
    return Delivery(event_id=msg.event_id, subject=IDENTITY_MERGED, data=msg.SerializeToString())


async def merge(conn: Connection, mall_id: str, survivor: str, absorbed: str) -> None:
    async with conn.transaction():  # as the batched consumer does
        await on_identity_merged(conn, [merged_event(mall_id, survivor, absorbed)])


async def holders(pool: asyncpg.Pool, mall_id: str) -> dict[str, int]:
    rows = await pool.fetch(
        """SELECT member_id::text AS m, count(*) AS n FROM coupons WHERE mall_id = $1
            GROUP BY member_id""",
        mall_id,
    )
    return {r["m"]: r["n"] for r in rows}


async def counter(pool: asyncpg.Pool, stock: Stock, member_id: str) -> int | None:
    value = await pool.fetchval(
        """SELECT claimed FROM member_claims
            WHERE mall_id = $1 AND stock_id = $2 AND member_id = $3::uuid""",
        stock.mall_id,
        stock.stock_id,
        member_id,
    )
    return None if value is None else int(value)


async def test_a_merge_moves_coupons_keys_and_counters_once_and_limits_count_both(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = str(uuid.uuid4()), str(uuid.uuid4())
    limited = await make_stock(pool, mall_id, max_per_member=2)
    open_stock = await make_stock(pool, mall_id)
    kept = await claim(pool, limited, absorbed, "absorbed-1")
    await claim(pool, limited, survivor, "survivor-1")
    theirs = await claim(pool, open_stock, absorbed, "same-key")  # both used one request id
    ours = await claim(pool, open_stock, survivor, "same-key")
    assert kept.coupon is not None
    assert theirs.coupon is not None
    assert ours.coupon is not None

    async with pool.acquire() as conn:
        await merge(conn, mall_id, survivor, absorbed)
        await merge(conn, mall_id, survivor, absorbed)  # seen again (outside the inbox)

    assert await holders(pool, mall_id) == {survivor: 4}
    assert await counter(pool, limited, survivor) == 2  # one each: the limit counts both
    assert await counter(pool, limited, absorbed) is None
    third = await claim(pool, limited, survivor)
    assert (third.outcome, third.reason) == (Outcome.LIMIT_REACHED, "member_limit_reached")
    # The absorbed member's retry (its app still names it) gets its coupon back, now the
    # survivor's; a new claim naming it is the survivor's, and limited as the survivor.
    retried = await claim(pool, limited, absorbed, "absorbed-1")
    assert retried.coupon is not None
    assert (retried.coupon.coupon_id, retried.coupon.member_id) == (kept.coupon.coupon_id, survivor)
    assert (await claim(pool, limited, absorbed)).outcome is Outcome.LIMIT_REACHED
    fresh = await claim(pool, open_stock, absorbed)
    assert fresh.coupon is not None
    assert fresh.coupon.member_id == survivor
    # The request id both used answers the survivor's own; the absorbed one's is kept apart.
    again = await claim(pool, open_stock, survivor, "same-key")
    assert again.coupon is not None
    assert again.coupon.coupon_id == ours.coupon.coupon_id
    kept_apart = await pool.fetchval(
        "SELECT request_id FROM coupons WHERE mall_id = $1 AND coupon_id = $2",
        mall_id,
        theirs.coupon.coupon_id,
    )
    assert kept_apart == f"same-key@{absorbed}"


async def test_a_claim_waiting_on_a_merge_lands_on_the_survivor(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = str(uuid.uuid4()), str(uuid.uuid4())
    stock = await make_stock(pool, mall_id, max_per_member=1)
    await claim(pool, stock, survivor)  # the survivor already holds its one

    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await on_identity_merged(conn, [merged_event(mall_id, survivor, absorbed)])
        # The merge holds its members; a claim naming the absorbed member waits for it.
        waiting = asyncio.create_task(claim(pool, stock, absorbed))
        await asyncio.sleep(0.3)
        blocked = not waiting.done()
        await tx.commit()
    result = await waiting

    assert blocked
    assert (result.outcome, result.reason) == (Outcome.LIMIT_REACHED, "member_limit_reached")
    assert await holders(pool, mall_id) == {survivor: 1}


@pytest.mark.parametrize("merge_after_s", [0.0, 0.002, 0.01])
async def test_claims_racing_a_merge_are_moved_or_made_for_the_survivor(
    pool: asyncpg.Pool, unique_id: str, merge_after_s: float
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = str(uuid.uuid4()), str(uuid.uuid4())
    stock = await make_stock(pool, mall_id, max_per_member=3)

    async def merging() -> None:
        await asyncio.sleep(merge_after_s)
        async with pool.acquire() as conn:
            await merge(conn, mall_id, survivor, absorbed)

    results = await asyncio.gather(
        *(claim(pool, stock, absorbed if i % 3 else survivor) for i in range(24)), merging()
    )
    won = [r for r in results if isinstance(r, Result) and r.outcome is Outcome.CLAIMED]
    # Everything is the survivor's and the limit held for the two as one: each could have
    # its 3 before the merge (the survivor then holds up to 6); none after.
    assert await holders(pool, mall_id) == {survivor: len(won)}
    assert 3 <= len(won) <= 3 + 3
    assert await counter(pool, stock, survivor) == len(won)
    assert await counter(pool, stock, absorbed) is None
    assert (await claim(pool, stock, absorbed)).outcome is Outcome.LIMIT_REACHED


async def test_the_merge_arrives_over_jetstream(
    url: str, pool: asyncpg.Pool, nats_url: str, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = str(uuid.uuid4()), str(uuid.uuid4())
    stock = await make_stock(pool, mall_id)
    async with pool.acquire() as conn:
        (post,) = await claim_batch(
            conn,
            [
                Claim(
                    mall_id,
                    stock.stock_id,
                    absorbed,
                    "pp-1",
                    channel=Channel.POST_PAYMENT,
                    transaction_id="4200001",
                )
            ],
        )
    assert post.coupon is not None
    delivery = merged_event(mall_id, survivor, absorbed)
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    nc = await nats.connect(nats_url)
    try:
        async with bootstrap(settings) as roles, running(roles, ("consume",)):
            await nc.jetstream().publish(
                IDENTITY_MERGED, delivery.data, headers={"Nats-Msg-Id": delivery.event_id}
            )
            for _ in range(300):
                if await holders(pool, mall_id) == {survivor: 1}:
                    break
                await asyncio.sleep(0.05)
    finally:
        await nc.close()
    assert await holders(pool, mall_id) == {survivor: 1}
    assert (
        await pool.fetchval(
            "SELECT survivor_member_id::text FROM member_merges WHERE mall_id = $1", mall_id
        )
        == survivor
    )
