"""The consumers alone, and identification at checkout, beside same-run baselines.

Starts embedded PostgreSQL and nats-server (or uses DATABASE_URL / NATS_URL), then:

* baselines: bench/payments.py's (empty aiohttp POST, empty grpc.aio unary, one-row
  PostgreSQL commit, awaited JetStream publish), plus the empty grpc.aio unary again with
  per-call latencies at the identification concurrency;
* points consumer alone: N ``member.payment.attributed`` events published (pipelined) onto the
  MEMBER stream, then the real ``Consumer`` with the real ``on_payment_attributed`` handler,
  in this process, on a fresh points database; credits/s until all N are handled, once per
  ``--batch-sizes`` (1 = one transaction per message). The ledger must hold exactly N credits;
* member consumer alone: the same with N ``payments.payment.captured`` events for a mall,
  tenant and store seeded directly in a fresh member database, and ``on_payment_captured``;
  the payments table must hold exactly N rows;
* identification: ``python -m member serve`` in a subprocess, a tenant credential issued over
  DirectoryService.IssueCredential, K members, a checkout code each (IssueCheckoutCode), then
  IdentifyMember with ``x-mall-credential`` at ``--concurrency`` in flight: RPC/s, p50/p99.

Results: printed as a table and written to bench/results/consumers-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import grpc
import nats
import uvloop
from eventbus.consumer import Consumer, Handler
from eventbus.streams import ensure_streams
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kit.credentials import CREDENTIAL_HEADER
from kit.migrations import migrate
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.member.v1 import events_pb2 as member_events
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc
from mall.payments.v1 import events_pb2 as payments_events
from mall_testing.demo import DemoMall, seed
from mall_testing.embedded import free_port
from member.adapters import repository
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from member.domain.model import JoinChannel
from member.entrypoints.consumers import PAYMENT_CAPTURED, on_payment_captured
from member.service_layer import directory
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.entrypoints.consumers import PAYMENT_ATTRIBUTED, on_payment_attributed

if TYPE_CHECKING:  # mypy sees bench/ as a namespace package from the repository root
    from bench.payments import (
        RESULTS,
        ROOT,
        baselines,
        create_database,
        fresh_streams,
        percentile,
        servers,
        spawn,
        wait_http,
    )
else:  # `python bench/consumers.py` puts bench/ itself on sys.path
    from payments import (
        RESULTS,
        ROOT,
        baselines,
        create_database,
        fresh_streams,
        percentile,
        servers,
        spawn,
        wait_http,
    )

MALL = "bench-mall"
APPID = "wxbenchconsumers"
MCHID = "1900000109"
TENANT = "bench-tenant"
STORE = "bench-store"
SHOP = "SHOP-BENCH"
SHOPPERS = 2000  # distinct members the events spread over (account rows locked per batch)
PUBLISH_WINDOW = 1000  # publishes in flight before awaiting their acks


async def timed(
    n: int, concurrency: int, one: Callable[[int], Awaitable[Any]]
) -> tuple[float, list[float]]:
    """Run ``one(i)`` n times with ``concurrency`` in flight: calls/s and latencies in ms."""
    counter = iter(range(n))
    latencies: list[float] = []

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await one(i)
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started), latencies


def latency_summary(rate: float, latencies: list[float]) -> dict[str, float]:
    return {
        "per_s": rate,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


async def grpc_empty_unary(n: int, concurrency: int) -> dict[str, float]:
    """The empty grpc.aio unary call (bench/empty_servers.py) with per-call latencies."""
    grpc_port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [
            sys.executable,
            str(ROOT / "bench" / "empty_servers.py"),
            str(free_port()),
            str(grpc_port),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        await asyncio.to_thread(proc.stdout.readline)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()

            async def one(_: int) -> None:
                await stub.Check(request)

            await timed(200, concurrency, one)
            return latency_summary(*await timed(n, concurrency, one))
    finally:
        proc.terminate()
        proc.wait()


async def publish_pipelined(js: Any, subject: str, events: Sequence[tuple[str, bytes]]) -> float:
    """Publish (event_id, payload) pairs with Nats-Msg-Id, a window in flight; msgs/s."""
    started = time.perf_counter()
    for i in range(0, len(events), PUBLISH_WINDOW):
        await asyncio.gather(
            *(
                js.publish(subject, data, headers={"Nats-Msg-Id": event_id})
                for event_id, data in events[i : i + PUBLISH_WINDOW]
            )
        )
    return len(events) / (time.perf_counter() - started)


async def consume_all(
    db_url: str,
    nats_url: str,
    *,
    name: str,
    stream: str,
    subject: str,
    handler: Handler,
    events: Sequence[tuple[str, bytes]],
    batch_size: int,
) -> dict[str, float]:
    """Publish ``events`` first, then time the real Consumer until it has handled them all."""
    nc = await nats.connect(nats_url)
    pool = await asyncpg.create_pool(db_url, min_size=2, max_size=4)
    try:
        js = nc.jetstream()
        await ensure_streams(js, "PAYMENTS", "MEMBER", "POINTS")
        published = await publish_pipelined(js, subject, events)
        consumer = Consumer(
            pool, js, name=name, stream=stream, subject=subject, handler=handler,
            batch_size=batch_size,
        )  # fmt: skip
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(consumer.run(stop))
        while consumer.handled < len(events):  # counted after each batch's commit
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError(f"{name} stopped at {consumer.handled}/{len(events)}")
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"{name} handled {consumer.handled}/{len(events)} in 600 s")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        return {
            "events": len(events),
            "batch_size": batch_size,
            "published_per_s": published,
            "handled_per_s": len(events) / elapsed,
            "seconds": elapsed,
        }
    finally:
        await pool.close()
        await nc.close()


async def points_alone(pg_url: str, nats_url: str, n: int, batch_size: int) -> dict[str, Any]:
    await fresh_streams(nats_url)
    db = await create_database(pg_url, "bench_points_consumer")
    await migrate(db, POINTS_MIGRATIONS)
    members = [str(uuid.uuid4()) for _ in range(SHOPPERS)]
    paid_at = timestamp(datetime.now(UTC))
    events = []
    for i in range(n):
        event_id = f"bench-attributed-{uuid.uuid4().hex}"
        msg = member_events.PaymentAttributed(
            event_id=event_id,
            mall_id=MALL,
            occurred_at=paid_at,
            member_id=members[i % SHOPPERS],
            tier_code="",
            tenant_id=TENANT,
            store_id=STORE,
            amount_fen=100 + i % 5000,
            transaction_id=f"4200{uuid.uuid4().int % 10**24:024d}",
            source=common_pb2.PAYMENT_SOURCE_WECHAT_PAY,
            paid_at=paid_at,
            appid=APPID,
            openid=f"bench-{i % SHOPPERS}",
        )
        events.append((event_id, msg.SerializeToString()))
    run = await consume_all(
        db,
        nats_url,
        name="points-payment-attributed",
        stream="MEMBER",
        subject=PAYMENT_ATTRIBUTED,
        handler=on_payment_attributed,
        events=events,
        batch_size=batch_size,
    )
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM ledger WHERE kind = 'credit'")
    finally:
        await conn.close()
    if rows != n:
        raise RuntimeError(f"points: {rows} ledger credits for {n} events")
    return {**run, "ledger_credits": rows}


async def seed_directory(conn: asyncpg.Connection) -> None:
    """The mall, tenant and store the captured payments name, as ops would create them."""
    async with conn.transaction():
        await directory.create_mall(
            conn,
            mall_id=MALL,
            name="Bench Mall",
            appid=APPID,
            brand_id="bench-brand",
            mchid=MCHID,
            time_zone="Asia/Shanghai",
        )
        await directory.create_tenant(
            conn, mall_id=MALL, tenant_id=TENANT, name="Bench Tenant", category="food"
        )
        await directory.create_store(
            conn,
            mall_id=MALL,
            tenant_id=TENANT,
            store_id=STORE,
            name="Bench Store",
            mchid=MCHID,
            sub_mchid="",
            shop_number=SHOP,
        )


async def member_alone(pg_url: str, nats_url: str, n: int, batch_size: int) -> dict[str, Any]:
    await fresh_streams(nats_url)
    db = await create_database(pg_url, "bench_member_consumer")
    await migrate(db, MEMBER_MIGRATIONS)
    conn = await asyncpg.connect(db)
    try:
        await seed_directory(conn)
    finally:
        await conn.close()
    shoppers = [f"bench-{uuid.uuid4().hex}" for _ in range(SHOPPERS)]
    now = timestamp(datetime.now(UTC))
    events = []
    for i in range(n):
        transaction_id = f"4200{uuid.uuid4().int % 10**24:024d}"
        event_id = f"payment-captured-{transaction_id}"
        msg = payments_events.PaymentCaptured(
            event_id=event_id,
            transaction_id=transaction_id,
            appid=APPID,
            mchid=MCHID,
            merchant_name="Bench Tenant",
            shop_name="Bench Store",
            shop_number=SHOP,
            openid=shoppers[i % SHOPPERS],
            amount_fen=100 + i % 5000,
            paid_at=now,
            received_at=now,
            mall_id=MALL,
            notification_id=str(uuid.uuid4()),
        )
        events.append((event_id, msg.SerializeToString()))
    run = await consume_all(
        db,
        nats_url,
        name="member-payment-captured",
        stream="PAYMENTS",
        subject=PAYMENT_CAPTURED,
        handler=on_payment_captured,
        events=events,
        batch_size=batch_size,
    )
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM payments")
        members = await conn.fetchval("SELECT count(*) FROM members")
    finally:
        await conn.close()
    if rows != n:
        raise RuntimeError(f"member: {rows} attributed payments for {n} events")
    return {**run, "payments_rows": rows, "members_joined": members}


async def identification(
    pg_url: str, nats_url: str, session: aiohttp.ClientSession, k: int, concurrency: int
) -> dict[str, Any]:
    """IssueCheckoutCode, then IdentifyMember with a tenant credential, against member serve."""
    await fresh_streams(nats_url)
    db = await create_database(pg_url, "bench_member_identify")
    await migrate(db, MEMBER_MIGRATIONS)
    port = free_port()
    server = spawn(
        "member-serve",
        ["-m", "member", "serve"],
        {"DATABASE_URL": db, "NATS_URL": nats_url, "GRPC_PORT": str(port)},
    )
    try:
        await wait_http(session, f"http://127.0.0.1:{server.metrics_port}/metrics")
        target = f"127.0.0.1:{port}"
        mall = await seed(target, DemoMall.unique())
        store = mall.stores[0]
        warmup = 200
        conn = await asyncpg.connect(db)
        try:
            async with conn.transaction():
                joined = await repository.join_by_identities(
                    conn,
                    "openid",
                    [(mall.mall_id, f"bench-{uuid.uuid4().hex}") for _ in range(k + warmup)],
                    JoinChannel.PAYMENT,
                )
        finally:
            await conn.close()
        member_ids = [m.member_id for m in joined.values()]
        async with grpc.aio.insecure_channel(target) as channel:
            members = member_service_pb2_grpc.MemberServiceStub(channel)
            dirs = member_service_pb2_grpc.DirectoryServiceStub(channel)
            issued = await dirs.IssueCredential(
                member_service_pb2.IssueCredentialRequest(
                    mall_id=mall.mall_id, tenant_id=store.tenant_id, label="bench POS"
                )
            )
            metadata = ((CREDENTIAL_HEADER, f"{issued.credential.credential_id}.{issued.secret}"),)
            codes: list[str] = [""] * len(member_ids)

            async def issue(i: int) -> None:
                reply = await members.IssueCheckoutCode(
                    member_service_pb2.IssueCheckoutCodeRequest(
                        mall_id=mall.mall_id, member_id=member_ids[i]
                    )
                )
                codes[i] = reply.code

            issue_rate, issue_lat = await timed(len(member_ids), concurrency, issue)

            async def identify(i: int) -> None:
                reply = await members.IdentifyMember(
                    member_service_pb2.IdentifyMemberRequest(
                        mall_id=mall.mall_id, store_id=store.store_id, checkout_code=codes[i]
                    ),
                    metadata=metadata,
                )
                if reply.member.member_id != member_ids[i]:
                    raise RuntimeError(f"code {i} identified {reply.member.member_id}")

            # Warm-up: the first call pays the credential's scrypt check, later ones hit the cache.
            await timed(warmup, concurrency, lambda i: identify(k + i))
            identify_rate, identify_lat = await timed(k, concurrency, identify)
        return {
            "members": k,
            "concurrency": concurrency,
            "issue_checkout_code": latency_summary(issue_rate, issue_lat),
            "identify_member": latency_summary(identify_rate, identify_lat),
        }
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)


async def main(
    n: int, k: int, concurrency: int, batch_sizes: list[int], baseline_n: int
) -> dict[str, Any]:
    async with (
        servers() as (pg_url, nats_url, _),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session,
    ):
        base: dict[str, Any] = dict(await baselines(pg_url, nats_url, session, baseline_n, 64))
        base["grpc_empty_unary_latency"] = await grpc_empty_unary(baseline_n, concurrency)
        points = [await points_alone(pg_url, nats_url, n, b) for b in batch_sizes]
        member = [await member_alone(pg_url, nats_url, n, b) for b in batch_sizes]
        ident = await identification(pg_url, nats_url, session, k, concurrency)
    return {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "baselines": base,
        "points_consumer": points,
        "member_consumer": member,
        "identification": ident,
    }


def report(result: dict[str, Any]) -> str:
    b = result["baselines"]
    commit = b["pg_one_row_commit_per_s"]
    empty = b["grpc_empty_unary_latency"]
    ident = result["identification"]
    c = ident["concurrency"]
    lines = [
        "| measure | value | ratio | p50 / p99 |",
        "|---|---|---|---|",
        f"| one-row PostgreSQL commit, pool 4 (baseline) | {commit:,.0f}/s | 1 | |",
        f"| awaited JetStream publish (baseline) | "
        f"{b['jetstream_awaited_publish_per_s']:,.0f}/s | | |",
        f"| empty aiohttp POST, 64 in flight (baseline) | "
        f"{b['aiohttp_empty_post_per_s']:,.0f}/s | | |",
        f"| empty grpc.aio unary, {c} in flight (baseline) | {empty['per_s']:,.0f}/s | 1 | "
        f"{empty['p50_ms']:.1f} / {empty['p99_ms']:.1f} ms |",
    ]
    for label, runs in (
        ("points: payment.attributed → ledger credit", result["points_consumer"]),
        ("member: payment.captured → attributed", result["member_consumer"]),
    ):
        for r in runs:
            lines.append(
                f"| {label}, batch {r['batch_size']} ({r['events']:,} events) | "
                f"{r['handled_per_s']:,.0f}/s | {r['handled_per_s'] / commit:.2f} of commit | |"
            )
    for key, label in (
        ("issue_checkout_code", "IssueCheckoutCode"),
        ("identify_member", "IdentifyMember by checkout code, tenant credential"),
    ):
        s = ident[key]
        lines.append(
            f"| {label}, {c} in flight | {s['per_s']:,.0f}/s | "
            f"{s['per_s'] / empty['per_s']:.2f} of empty unary | "
            f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} ms |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="events per consumer run")
    parser.add_argument("-k", type=int, default=5_000, help="IdentifyMember calls measured")
    parser.add_argument("-c", "--concurrency", type=int, default=32, help="RPCs in flight")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 200],
        help="consumer fetch sizes to run (1 = one transaction per message)",
    )
    parser.add_argument("--baseline-n", type=int, default=5_000, help="calls per baseline")
    args = parser.parse_args()
    if args.n < 1 or args.k < 1 or min(args.batch_sizes) < 1:
        parser.error("-n, -k and --batch-sizes must be at least 1")
    outcome = uvloop.run(main(args.n, args.k, args.concurrency, args.batch_sizes, args.baseline_n))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"consumers-{stamp}.json").write_text(json.dumps(outcome, indent=2))
    print(report(outcome))
