"""The short chaos test: kill -9 each process of the payment path while payments flow, restart
it, and prove with the reconciliation that nothing was lost, doubled or left unsynced.

The suite runs as real processes (tests/suite_processes.py), one per role:

    member  serve, consume, relay
    points  serve, consume, relay (the relay role also syncs points back to WeChat Pay)
    gateway serve (the signed WeChat Pay webhook)

The WeChat Pay simulator (in this process, so the test can read what it delivered) notifies a
few hundred signed, encrypted payments to the gateway and retries whatever was not
acknowledged, as the platform does (on its schedule, scaled down); a few refunds follow once
their payments' points were synced (the platform refunds nothing before). While they flow,
each process in turn is killed with SIGKILL and started again. Then, once everything is
quiet (every notification acknowledged, every consumer drained, every outbox empty, every
points report sent), ``ReconciliationService.ReconcilePayments`` over the test's window must
find zero differences between the platform's bill, the PAYMENTS and MEMBER streams, points'
credits and reversals and the sync state. No wall-clock asserts; the waits are bounded.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from kit.migrations import migrate
from kit.proto import timestamp
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc
from mall_testing.demo import DemoMall, seed
from mall_testing.embedded import free_port
from mall_testing.plugin import FreshDatabase, Nats
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.state import DeliveryStatus

from tests.conftest import fetchval
from tests.suite_processes import (
    DURABLES,
    Fleet,
    Replica,
    consumer_settled,
    fleet,
    points_wechatpay_env,
    simulator_settings,
    wait_until,
)

PAYMENTS = 300
REFUNDS = 8
SHOPPERS = 40
#: Seconds between two payments: the flow lasts about as long as the kills.
PAYMENT_GAP_S = 0.06
#: Down time of a killed process before it is started again.
DOWN_S = 0.5
#: Killed in this order, each once.
VICTIMS = (
    "points-relay",
    "gateway",
    "member-consume",
    "points-consume",
    "member-relay",
    "member-serve",
    "points-serve",
)


async def chaos(procs: Fleet, http: aiohttp.ClientSession, log: list[dict[str, Any]]) -> None:
    """SIGKILL each victim in turn, start it again, wait until it serves."""
    for name in VICTIMS:
        [victim] = procs.named(name)
        await procs.kill(victim)
        await asyncio.sleep(DOWN_S)
        again: Replica = await procs.restart(victim)
        await procs.wait_serving_metrics(http, [again])
        log.append({"killed": name, "restarts": again.restarts})
        await asyncio.sleep(DOWN_S)


@pytest.mark.timeout(300)
async def test_killing_every_process_in_turn_loses_and_doubles_nothing(
    fresh_database: FreshDatabase, nats_url: str, jetstream: Nats, tmp_path: Path
) -> None:
    member_db = await fresh_database("member")
    points_db = await fresh_database("points")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    member_grpc, points_grpc, gateway_port = free_port(), free_port(), free_port()
    mall = DemoMall.unique()
    key_dir = tmp_path / "wechatpay"
    notify_url = f"http://127.0.0.1:{gateway_port}/wechatpay/notifications/{mall.mchid}"
    sim_settings = simulator_settings(key_dir, mall, notify_url)
    start = datetime.now(UTC) - timedelta(seconds=1)

    async with (
        serve(sim_settings) as sim,
        fleet(tmp_path, nats_url) as procs,
        aiohttp.ClientSession() as http,
    ):
        points_env = {"DATABASE_URL": points_db, **points_wechatpay_env(key_dir, sim.url)}
        await procs.start(
            "member-serve", "member", "serve", DATABASE_URL=member_db, GRPC_PORT=str(member_grpc)
        )
        await procs.start(
            "points-serve", "points", "serve", GRPC_PORT=str(points_grpc), **points_env
        )
        await procs.wait_serving_metrics(http)
        for role in ("consume", "relay"):
            await procs.start(f"member-{role}", "member", role, DATABASE_URL=member_db)
            await procs.start(f"points-{role}", "points", role, **points_env)
        await procs.start(
            "gateway",
            "gateway",
            "serve",
            HTTP_PORT=str(gateway_port),
            WECHATPAY_MERCHANTS_FILE=str(key_dir / "merchants.json"),
            MEMBER_GRPC_TARGET=f"127.0.0.1:{member_grpc}",
            POINTS_GRPC_TARGET=f"127.0.0.1:{points_grpc}",
        )
        await procs.wait_serving_metrics(http)
        await seed(f"127.0.0.1:{member_grpc}", mall)

        async def ready() -> int:
            async with http.get(f"http://127.0.0.1:{gateway_port}/readyz") as resp:
                return resp.status

        await wait_until("gateway ready", ready, lambda status: status == 200)

        rng = random.Random(20261126)
        shoppers = [f"o-chaos-{uuid.uuid4().hex}" for _ in range(SHOPPERS)]
        paid: dict[str, int] = {}
        refunded: dict[str, int] = {}

        async def pay() -> None:
            for i in range(PAYMENTS):
                store = mall.stores[i % len(mall.stores)]
                amount = rng.randint(1, 200_000)
                body: dict[str, Any] = {
                    "appid": mall.appid,
                    "mchid": mall.mchid,
                    "shop_number": store.shop_number,
                    "openid": rng.choice(shoppers),
                    "amount": amount,
                }
                async with http.post(f"{sim.url}/control/payments", json=body) as resp:
                    assert resp.status == 202, await resp.text()
                    paid[(await resp.json())["transaction_id"]] = amount
                await asyncio.sleep(PAYMENT_GAP_S)

        async def refund() -> None:
            """A few refunds, each once its payment's points were synced (platform rule)."""
            while len(refunded) < REFUNDS:
                synced = [tx for tx in paid if tx not in refunded and sim.state.points_synced(tx)]
                if synced:
                    tx = rng.choice(synced)
                    amount = rng.randint(1, paid[tx])
                    body = {"transaction_id": tx, "refund_amount": amount}
                    async with http.post(f"{sim.url}/control/refunds", json=body) as resp:
                        assert resp.status == 202, await resp.text()
                    refunded[tx] = amount
                await asyncio.sleep(0.5)

        kills: list[dict[str, Any]] = []
        await asyncio.gather(pay(), refund(), chaos(procs, http, kills))
        assert [k["killed"] for k in kills] == list(VICTIMS)

        # -- quiescence: bounded waits, no clock asserts ------------------------------------
        def delivered(s: Running = sim) -> bool:
            return all(d.status == DeliveryStatus.DELIVERED for d in s.state.deliveries.values())

        async def all_delivered() -> bool:
            procs.check_alive()
            return delivered()

        await wait_until("every notification acknowledged", all_delivered, bool)
        for stream, durable in DURABLES:

            async def settled(stream: str = stream, durable: str = durable) -> bool:
                return await consumer_settled(jetstream, stream, durable)

            await wait_until(f"{durable} drained", settled, bool)
        for db in (member_db, points_db):

            async def outbox(db: str = db) -> object:
                return await fetchval(db, "SELECT count(*) FROM outbox")

            await wait_until("outbox drained", outbox, lambda n: n == 0)

        async def unsent() -> object:
            return await fetchval(
                points_db,
                "SELECT count(*) FROM wechat_points_sync WHERE mall_id = $1 AND state <> 'SENT'",
                mall.mall_id,
            )

        await wait_until("every points report sent", unsent, lambda n: n == 0)

        # -- the proof -----------------------------------------------------------------------
        async with grpc.aio.insecure_channel(f"127.0.0.1:{points_grpc}") as channel:
            stub = points_service_pb2_grpc.ReconciliationServiceStub(channel)
            report = await stub.ReconcilePayments(
                points_service_pb2.ReconcilePaymentsRequest(
                    mall_id=mall.mall_id,
                    start_time=timestamp(start),
                    end_time=timestamp(datetime.now(UTC) + timedelta(seconds=1)),
                ),
                timeout=60,
                wait_for_ready=True,
            )
        attempts = Counter(len(d.attempts) for d in sim.state.deliveries.values())
        print(
            "\nchaos:",
            json.dumps(
                {
                    "kills": kills,
                    "payments": len(paid),
                    "refunds": len(refunded),
                    "deliveries_by_attempts": dict(sorted(attempts.items())),
                    "redelivered": sum(n for a, n in attempts.items() if a > 1),
                    "sources": [
                        {"name": s.name, "payments": s.payments, "refunds": s.refunds}
                        for s in report.sources
                    ],
                    "differences": len(report.differences),
                }
            ),
        )
        assert [
            (points_service_pb2.DifferenceKind.Name(d.kind), d.transaction_id, d.refund_id, d.stage)
            for d in report.differences
        ] == []
        assert report.payments_checked == PAYMENTS
        assert report.refunds_checked == REFUNDS
        assert all(s.consulted for s in report.sources)
        assert {s.name: s.payments for s in report.sources} == dict.fromkeys(
            ("platform", "gateway", "member", "points", "sync"), PAYMENTS
        )

        codes = await procs.stop()
        assert codes == dict.fromkeys(codes, 0), {
            r.name: r.log_tail() for r in procs.replicas if codes[r.name] != 0
        }
