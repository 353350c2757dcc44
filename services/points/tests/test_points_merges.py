"""Following member merges on real PostgreSQL (and through JetStream): the absorbed
member's balance, lots and holds move to the survivor once, and payments or refunds racing
the merge end on the survivor too, so no point is lost or counted twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import nats
import pytest
from eventbus.consumer import Consumer, Delivery
from eventbus.streams import ensure_streams
from kit.migrations import migrate
from mall.member.v1 import events_pb2 as member_events
from mall_testing.plugin import FreshDatabase
from points.bootstrap import MIGRATIONS
from points.domain.redemption import HoldRequest
from points.entrypoints.consumers import (
    PAYMENT_ATTRIBUTED,
    REFUND_ATTRIBUTED,
    on_payment_attributed,
    on_refund_attributed,
)
from points.entrypoints.merge_consumer import IDENTITY_MERGED, on_identity_merged
from points.service_layer.redemptions import hold_points


@pytest.fixture(scope="module")
async def points_db(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("points")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture
async def conn(points_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(points_db)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def mall_id(unique_id: str) -> str:
    return f"mall-{unique_id}"


def attributed(mall_id: str, member_id: str, amount_fen: int, tx: str = "") -> Delivery:
    msg = member_events.PaymentAttributed(
        mall_id=mall_id,
        member_id=member_id,
        tenant_id="sports",
        store_id="sports-l1",
        amount_fen=amount_fen,
        transaction_id=tx or f"4200{uuid.uuid4().hex[:20]}",
        appid="wxappid",
        openid="o-shopper",
    )
    msg.paid_at.FromDatetime(datetime.now(UTC))
    return Delivery(str(uuid.uuid4()), PAYMENT_ATTRIBUTED, msg.SerializeToString())


def refunded(mall_id: str, member_id: str, tx: str, refund_fen: int, pay_fen: int) -> Delivery:
    msg = member_events.RefundAttributed(
        mall_id=mall_id,
        member_id=member_id,
        tenant_id="sports",
        store_id="sports-l1",
        transaction_id=tx,
        refund_id=f"5030{uuid.uuid4().hex[:20]}",
        refund_amount_fen=refund_fen,
        pay_amount_fen=pay_fen,
    )
    return Delivery(str(uuid.uuid4()), REFUND_ATTRIBUTED, msg.SerializeToString())


def merged(mall_id: str, survivor: str, gone: str) -> Delivery:
    msg = member_events.IdentityMerged(
        mall_id=mall_id,
        survivor_member_id=survivor,
        merged_member_id=gone,
        merge_request_id=f"merge-{uuid.uuid4().hex[:8]}",
    )
    return Delivery(str(uuid.uuid4()), IDENTITY_MERGED, msg.SerializeToString())


async def credit(conn: asyncpg.Connection, *deliveries: Delivery) -> None:
    async with conn.transaction():
        await on_payment_attributed(conn, deliveries)


async def follow(conn: asyncpg.Connection, *deliveries: Delivery) -> None:
    async with conn.transaction():
        await on_identity_merged(conn, deliveries)


async def balance(conn: asyncpg.Connection, mall_id: str, member_id: str) -> int:
    value = await conn.fetchval(
        "SELECT balance FROM accounts WHERE mall_id = $1 AND member_id = $2",
        mall_id,
        uuid.UUID(member_id),
    )
    return int(value or 0)


async def ledger_sum(conn: asyncpg.Connection, mall_id: str, member_id: str) -> int:
    return int(
        await conn.fetchval(
            """SELECT coalesce(sum(points), 0) FROM ledger
                WHERE mall_id = $1 AND member_id = $2""",
            mall_id,
            uuid.UUID(member_id),
        )
    )


async def credited(conn: asyncpg.Connection, mall_id: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(points), 0) FROM ledger WHERE mall_id = $1 AND kind = 'credit'",
            mall_id,
        )
    )


async def test_a_merge_moves_the_balance_lots_and_holds_once(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    survivor, gone = str(uuid.uuid4()), str(uuid.uuid4())
    await credit(conn, attributed(mall_id, survivor, 10_000), attributed(mall_id, gone, 25_000))
    hold, _ = await hold_points(
        conn, HoldRequest(mall_id, gone, 50, "gift", "mug", f"r-{uuid.uuid4().hex[:8]}")
    )
    event = merged(mall_id, survivor, gone)

    await follow(conn, event)
    await follow(conn, event)  # a redelivery past the inbox still moves nothing twice

    assert await balance(conn, mall_id, survivor) == 100 + 250
    assert await balance(conn, mall_id, gone) == 0
    for member in (survivor, gone):  # each ledger still adds up to its balance
        assert await ledger_sum(conn, mall_id, member) == await balance(conn, mall_id, member)
    lots = await conn.fetch(
        "SELECT member_id, points_remaining FROM lots WHERE mall_id = $1 ORDER BY 2", mall_id
    )
    assert [(str(r["member_id"]), r["points_remaining"]) for r in lots] == [
        (survivor, 100),
        (survivor, 250),
    ]
    holder = await conn.fetchval(
        "SELECT member_id FROM holds WHERE mall_id = $1 AND hold_id = $2",
        mall_id,
        uuid.UUID(hold.hold_id),
    )
    assert str(holder) == survivor
    pair = await conn.fetch(
        """SELECT member_id, points, reference FROM ledger
            WHERE mall_id = $1 AND kind = 'adjustment' ORDER BY entry_id""",
        mall_id,
    )
    assert [(str(r["member_id"]), r["points"]) for r in pair] == [(gone, -250), (survivor, 250)]
    assert pair[0]["reference"].startswith("merge:merge-")


async def test_payments_and_refunds_naming_the_absorbed_member_land_on_the_survivor(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    survivor, gone = str(uuid.uuid4()), str(uuid.uuid4())
    early = f"4200{uuid.uuid4().hex[:20]}"
    await credit(conn, attributed(mall_id, gone, 40_000, early))
    await follow(conn, merged(mall_id, survivor, gone))

    await credit(conn, attributed(mall_id, gone, 10_000))  # attributed before the merge
    async with conn.transaction():
        await on_refund_attributed(conn, [refunded(mall_id, gone, early, 40_000, 40_000)])

    assert await balance(conn, mall_id, survivor) == 100
    assert await balance(conn, mall_id, gone) == 0
    assert await ledger_sum(conn, mall_id, gone) == 0


async def test_a_merge_racing_payments_loses_no_points(
    points_db: str, conn: asyncpg.Connection, mall_id: str
) -> None:
    survivor, gone = str(uuid.uuid4()), str(uuid.uuid4())
    others = [await asyncpg.connect(points_db) for _ in range(4)]
    amounts = [1_000 * (i + 1) for i in range(20)]

    async def payer(c: asyncpg.Connection, mine: list[int], member: str) -> None:
        for amount in mine:
            await credit(c, attributed(mall_id, member, amount))

    async def merging(c: asyncpg.Connection) -> None:
        await asyncio.sleep(0.005)
        await follow(c, merged(mall_id, survivor, gone))

    try:
        await asyncio.gather(
            *(
                payer(c, amounts[i::3], gone if i % 2 else survivor)
                for i, c in enumerate(others[:3])
            ),
            merging(others[3]),
        )
    finally:
        for c in others:
            await c.close()

    total = await credited(conn, mall_id)
    assert total == sum(amounts) // 100
    assert await balance(conn, mall_id, survivor) == total
    assert await balance(conn, mall_id, gone) == 0
    assert await ledger_sum(conn, mall_id, survivor) == total
    open_lots = await conn.fetchval(
        """SELECT coalesce(sum(points_remaining), 0) FROM lots
            WHERE mall_id = $1 AND member_id = $2""",
        mall_id,
        uuid.UUID(survivor),
    )
    assert open_lots == total


async def test_a_survivor_absorbed_later_takes_earlier_merges_along(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    first, second, final = (str(uuid.uuid4()) for _ in range(3))
    await credit(conn, attributed(mall_id, first, 10_000))
    await follow(conn, merged(mall_id, second, first))
    await follow(conn, merged(mall_id, final, second))

    await credit(conn, attributed(mall_id, first, 5_000))

    assert await balance(conn, mall_id, final) == 150
    assert await balance(conn, mall_id, first) == await balance(conn, mall_id, second) == 0


async def test_merges_and_payments_arriving_through_jetstream_end_on_the_survivor(
    points_db: str, nats_url: str, mall_id: str
) -> None:
    """The real consumers on the MEMBER stream, each with its own durable, so the merge may
    be handled before or after payments published ahead of it."""
    survivor, gone = str(uuid.uuid4()), str(uuid.uuid4())
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, "MEMBER")
    pool = await asyncpg.create_pool(points_db, min_size=1, max_size=4)
    tag = uuid.uuid4().hex[:8]
    consumers = [
        Consumer(pool, js, name=f"points-{n}-test-{tag}", stream="MEMBER", subject=s, handler=h)
        for n, s, h in (
            ("payment-attributed", PAYMENT_ATTRIBUTED, on_payment_attributed),
            ("identity-merged", IDENTITY_MERGED, on_identity_merged),
        )
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    published = [
        attributed(mall_id, gone, 30_000),
        attributed(mall_id, survivor, 20_000),
        merged(mall_id, survivor, gone),
        attributed(mall_id, gone, 10_000),  # a payment member attributed just before the merge
    ]
    try:
        for d in published:
            await js.publish(d.subject, d.data, headers={"Nats-Msg-Id": d.event_id})
        conn = await asyncpg.connect(points_db)
        try:
            for _ in range(200):
                if await balance(conn, mall_id, survivor) == 600:
                    break
                await asyncio.sleep(0.05)
            assert await balance(conn, mall_id, survivor) == 600
            assert await balance(conn, mall_id, gone) == 0
        finally:
            await conn.close()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for c in consumers:
            await js.delete_consumer("MEMBER", c.name)
        await nc.close()
        await pool.close()
