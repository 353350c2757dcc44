"""Exactly once under failure: a killed consumer, a poison message, refused input."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from typing import Any

from mall_testing.demo import DemoMall, payment_notification, seed
from mall_testing.plugin import FreshDatabase, Nats

from tests.conftest import Suite, fetchval, start_suite
from tests.test_payment_path import post, wait_for_balance


async def post_all(suite: Suite, notifications: list[dict[str, Any]]) -> list[int]:
    gate = asyncio.Semaphore(64)

    async def one(n: dict[str, Any]) -> int:
        async with gate:
            return await post(suite, n)

    return await asyncio.gather(*(one(n) for n in notifications))


async def wait_for(dsn: str, query: str, expected: object, *args: object) -> None:
    value: object = None
    for _ in range(3600):  # up to 3 minutes: this machine is shared and noisy
        value = await fetchval(dsn, query, *args)
        if value == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{query!r} stayed at {value!r}, expected {expected!r}")


async def start_points_consumer(suite: Suite) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DATABASE_URL": suite.points_db,
        "NATS_URL": suite.nats_url,
        "CONSUMER_ACK_WAIT_S": "2",
        "CONSUMER_BATCH_SIZE": "50",
        "LOG_LEVEL": "warning",
    }
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "points", "consume", env=env)


async def test_thousand_payments_with_points_consumer_killed_midway(
    fresh_database: FreshDatabase, nats_url: str, jetstream: Nats
) -> None:
    async with start_suite(fresh_database, nats_url, points_roles=("serve", "relay")) as suite:
        mall = await seed(suite.member_grpc, DemoMall.unique())
        rng = random.Random(20261126)
        shoppers = [f"o-{uuid.uuid4().hex}" for _ in range(40)]
        notifications = [
            payment_notification(
                mall, openid=rng.choice(shoppers), amount_fen=rng.randint(100, 500_00)
            )
            for _ in range(1000)
        ]
        expected: dict[str, int] = {}
        for n in notifications:
            r = n["resource"]
            expected[r["openid"]] = expected.get(r["openid"], 0) + r["amount"] // 100

        consumer = await start_points_consumer(suite)
        posting = asyncio.create_task(post_all(suite, notifications))
        # Kill -9 once the consumer is mid-stream: some payments credited, most not yet.
        count_sql = "SELECT count(*) FROM ledger WHERE mall_id = $1"
        for _ in range(1200):
            credited = await fetchval(suite.points_db, count_sql, mall.mall_id)
            assert isinstance(credited, int)
            if credited >= 150:
                break
            await asyncio.sleep(0.01)
        consumer.send_signal(signal.SIGKILL)
        assert await consumer.wait() == -signal.SIGKILL
        killed_at = await fetchval(suite.points_db, count_sql, mall.mall_id)
        assert isinstance(killed_at, int)
        assert killed_at < 1000

        statuses = await posting
        assert statuses == [204] * 1000
        consumer = await start_points_consumer(suite)
        try:
            await wait_for(suite.points_db, count_sql, 1000, mall.mall_id)
            # Let redeliveries of the batch in flight at the kill arrive: still 1000.
            for openid, points in rng.sample(sorted(expected.items()), 5):
                await wait_for_balance(suite, mall, openid, points)
        finally:
            consumer.send_signal(signal.SIGTERM)
            await consumer.wait()

        assert await fetchval(suite.points_db, count_sql, mall.mall_id) == 1000
        balances = await fetchval(
            suite.points_db,
            "SELECT json_object_agg(member_id, balance) FROM accounts WHERE mall_id = $1",
            mall.mall_id,
        )
        assert isinstance(balances, str)
        assert sorted(__import__("json").loads(balances).values()) == sorted(expected.values())
        mismatched = await fetchval(
            suite.points_db,
            """SELECT count(*) FROM accounts a
                WHERE mall_id = $1 AND balance <> (SELECT coalesce(sum(points), 0) FROM ledger l
                                   WHERE l.mall_id = a.mall_id AND l.member_id = a.member_id)""",
            mall.mall_id,
        )
        assert mismatched == 0


async def test_poison_payment_is_dead_lettered_and_the_stream_keeps_flowing(suite: Suite) -> None:
    mall = await seed(suite.member_grpc, DemoMall.unique())
    openid = f"o-{uuid.uuid4().hex}"
    # Valid on the wire, but for a shop the mall does not have: member can never attribute it.
    poison = payment_notification(mall, openid=openid, amount_fen=999_00, shop_number="NOPE-404")

    assert await post(suite, poison) == 204
    assert await post(suite, payment_notification(mall, openid=openid, amount_fen=300)) == 204

    await wait_for_balance(suite, mall, openid, 3)
    await wait_for(
        suite.member_db,
        "SELECT count(*) FROM dead_letters WHERE consumer = 'member-payment-captured'"
        " AND event_id = $1",
        1,
        poison["resource"]["transaction_id"],
    )
    error = await fetchval(suite.member_db, "SELECT error FROM dead_letters LIMIT 1")
    assert "unknown_shop" in str(error)


async def test_refused_notifications_publish_nothing(suite: Suite, jetstream: Nats) -> None:
    mall = await seed(suite.member_grpc, DemoMall.unique())
    valid = payment_notification(mall, openid="o-refused", amount_fen=100)
    missing = {**valid, "resource": {k: v for k, v in valid["resource"].items() if k != "amount"}}

    async with suite.http.post(
        f"{suite.gateway_url}/wechatpay/notifications",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "invalid_json"
    async with suite.http.post(
        f"{suite.gateway_url}/wechatpay/notifications", json=missing
    ) as resp:
        assert resp.status == 400
        body = await resp.json()
        assert body["code"] == "missing_field"
        assert "amount" in body["detail"]

    info = await jetstream.js.stream_info("PAYMENTS")
    assert info.state.messages == 0
