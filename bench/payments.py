"""`make bench`: payments through the whole path, beside same-run baselines.

Starts embedded PostgreSQL and nats-server (or uses DATABASE_URL / NATS_URL), runs member,
points and the gateway as separate processes (as `make run` does), seeds a mall, then:

* baselines: an empty aiohttp POST, an empty grpc.aio unary call, a one-row PostgreSQL
  commit, an awaited JetStream publish — same machine, same run, same client concurrency;
* payments: N notifications posted to the gateway as fast as it takes them; payments/s
  accepted, payments/s credited end to end, and p50/p99 from POST to the
  ``points.points.credited`` event (the moment the shopper's "+N points" can be pushed).

Results: printed as a table and written to bench/results/payments-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import nats
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kit.migrations import migrate
from mall.points.v1 import events_pb2 as points_events
from mall_testing.demo import DemoMall, payment_notification, seed
from mall_testing.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def rate(n: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> float:
    """Run ``one(i)`` n times with ``concurrency`` in flight; return operations per second."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def servers() -> AsyncIterator[tuple[str, str]]:
    pg_url, nats_url = os.environ.get("DATABASE_URL"), os.environ.get("NATS_URL")
    with contextlib.ExitStack() as stack:
        if not pg_url:
            pg_url = stack.enter_context(EmbeddedPostgres(stop_with_parent=False)).url
        if not nats_url:
            nats_url = stack.enter_context(EmbeddedNats(stop_with_parent=False)).url
        yield pg_url, nats_url


async def create_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **env, "LOG_LEVEL": "warning", "LOG_FORMAT": "json"},
        cwd=ROOT,
    )


async def wait_http(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(400):
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} never became ready")


async def baselines(
    pg_url: str, nats_url: str, session: aiohttp.ClientSession, n: int, concurrency: int
) -> dict[str, float]:
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [sys.executable, str(ROOT / "bench" / "empty_servers.py"), str(http_port), str(grpc_port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        await asyncio.to_thread(proc.stdout.readline)
        url = f"http://127.0.0.1:{http_port}/empty"
        body = json.dumps({"hello": "world"}).encode()

        async def http_one(_: int) -> None:
            async with session.post(url, data=body) as resp:
                await resp.read()

        await rate(200, concurrency, http_one)
        http_rate = await rate(n, concurrency, http_one)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()

            async def grpc_one(_: int) -> None:
                await stub.Check(request)

            await rate(200, 32, grpc_one)
            grpc_rate = await rate(n, 32, grpc_one)
    finally:
        proc.terminate()
        proc.wait()

    db_url = await create_database(pg_url, "bench_baseline")
    pool = await asyncpg.create_pool(db_url, min_size=4, max_size=4)
    try:
        await pool.execute("CREATE TABLE t (k bigint PRIMARY KEY, v bigint NOT NULL)")

        async def pg_one(i: int) -> None:
            await pool.execute(
                "INSERT INTO t VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET v = t.v + 1", i
            )

        pg_rate = await rate(n, 4, pg_one)
    finally:
        await pool.close()

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="BENCHBASE", subjects=["benchbase.>"])

        async def js_one(i: int) -> None:
            await js.publish("benchbase.x", b"x" * 200)

        js_rate = await rate(min(n, 3000), 1, js_one)
        await js.delete_stream("BENCHBASE")
    finally:
        await nc.close()
    return {
        "aiohttp_empty_post_per_s": http_rate,
        "grpc_empty_unary_per_s": grpc_rate,
        "pg_one_row_commit_per_s": pg_rate,
        "jetstream_awaited_publish_per_s": js_rate,
    }


async def payments(
    pg_url: str,
    nats_url: str,
    session: aiohttp.ClientSession,
    n: int,
    concurrency: int,
    paced_rate: float,
) -> dict[str, float]:
    member_db = await create_database(pg_url, "bench_member")
    points_db = await create_database(pg_url, "bench_points")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    member_port, points_port, http_port = free_port(), free_port(), free_port()
    common = {"NATS_URL": nats_url}
    procs = [
        spawn(
            ["-m", "member", "all"],
            {**common, "DATABASE_URL": member_db, "GRPC_PORT": str(member_port)},
        ),
        spawn(
            ["-m", "points", "all"],
            {**common, "DATABASE_URL": points_db, "GRPC_PORT": str(points_port)},
        ),
        spawn(
            ["-m", "gateway", "serve"],
            {
                **common,
                "HTTP_PORT": str(http_port),
                # The pipeline behind the webhook; bench/webhook.py measures the signed door.
                "WECHATPAY_ACCEPT_UNSIGNED": "true",
                "MEMBER_GRPC_TARGET": f"127.0.0.1:{member_port}",
                "POINTS_GRPC_TARGET": f"127.0.0.1:{points_port}",
            },
        ),
    ]
    try:
        base = f"http://127.0.0.1:{http_port}"
        await wait_http(session, f"{base}/readyz")
        mall = await seed(f"127.0.0.1:{member_port}", DemoMall.unique())
        shoppers = [f"bench-{uuid.uuid4().hex}" for _ in range(500)]
        notifications = [
            payment_notification(mall, openid=shoppers[i % len(shoppers)], amount_fen=100 + i)
            for i in range(n + 200 + n // 2)
        ]
        warmup, measured = notifications[:200], notifications[200 : 200 + n]
        paced = notifications[200 + n :]
        sent: dict[str, float] = {}
        credited: dict[str, float] = {}
        done = asyncio.Event()
        nc = await nats.connect(nats_url)

        async def on_credit(msg: Any) -> None:
            event = points_events.PointsCredited.FromString(msg.data)
            credited.setdefault(event.transaction_id, time.perf_counter())
            if len(credited) >= len(notifications):
                done.set()

        await nc.subscribe("points.points.credited", cb=on_credit)
        url = f"{base}/wechatpay/notifications"

        async def post(batch: list[dict[str, Any]], i: int) -> None:
            note = batch[i]
            sent[note["resource"]["transaction_id"]] = time.perf_counter()
            async with session.post(url, json=note) as resp:
                if resp.status != 204:
                    raise RuntimeError(f"gateway answered {resp.status}: {await resp.text()}")

        await rate(len(warmup), concurrency, lambda i: post(warmup, i))
        for _ in range(600):
            if all(n["resource"]["transaction_id"] in credited for n in warmup):
                break
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        accepted_rate = await rate(len(measured), concurrency, lambda i: post(measured, i))
        ids = [n["resource"]["transaction_id"] for n in measured]
        for _ in range(12000):
            if all(t in credited for t in ids):
                break
            await asyncio.sleep(0.05)
        finished = max(credited[t] for t in ids)
        latencies = [(credited[t] - sent[t]) * 1000 for t in ids]

        # Steady load below saturation: how long a shopper waits for "+N points".
        async def paced_post(i: int) -> None:
            await asyncio.sleep(max(0.0, paced_start + i / paced_rate - time.perf_counter()))
            await post(paced, i)

        paced_start = time.perf_counter()
        await asyncio.gather(*(paced_post(i) for i in range(len(paced))))
        await asyncio.wait_for(done.wait(), timeout=600)
        await nc.close()
        steady = [
            (credited[t] - sent[t]) * 1000 for t in (n["resource"]["transaction_id"] for n in paced)
        ]
        ledger_rows = await (await asyncpg.connect(points_db)).fetchval(
            "SELECT count(*) FROM ledger WHERE mall_id = $1", mall.mall_id
        )
        if ledger_rows != len(notifications):
            raise RuntimeError(f"{ledger_rows} ledger rows for {len(notifications)} payments")
        return {
            "payments": len(measured),
            "accepted_per_s": accepted_rate,
            "credited_end_to_end_per_s": len(measured) / (finished - started),
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p99_ms": percentile(latencies, 99),
            "latency_mean_ms": statistics.fmean(latencies),
            "paced_rate_per_s": paced_rate,
            "paced_payments": len(paced),
            "paced_latency_p50_ms": percentile(steady, 50),
            "paced_latency_p99_ms": percentile(steady, 99),
            "paced_latency_max_ms": max(steady),
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


async def main(n: int, concurrency: int, paced_rate: float) -> dict[str, Any]:
    async with (
        servers() as (pg_url, nats_url),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session,
    ):
        base = await baselines(pg_url, nats_url, session, n, concurrency)
        result = await payments(pg_url, nats_url, session, n, concurrency, paced_rate)
    return {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "concurrency": concurrency,
        "baselines": base,
        "payment_path": result,
    }


def report(result: dict[str, Any]) -> str:
    b, p = result["baselines"], result["payment_path"]
    lines = [
        "| measure | value | ratio |",
        "|---|---|---|",
        f"| empty aiohttp POST (baseline) | {b['aiohttp_empty_post_per_s']:,.0f}/s | 1 |",
        f"| empty grpc.aio unary (baseline) | {b['grpc_empty_unary_per_s']:,.0f}/s | |",
        f"| one-row PostgreSQL commit, pool 4 (baseline) | "
        f"{b['pg_one_row_commit_per_s']:,.0f}/s | |",
        f"| awaited JetStream publish (baseline) | "
        f"{b['jetstream_awaited_publish_per_s']:,.0f}/s | |",
        f"| payments accepted by the gateway | {p['accepted_per_s']:,.0f}/s | "
        f"{p['accepted_per_s'] / b['aiohttp_empty_post_per_s']:.2f} of empty POST |",
        f"| payments credited end to end | {p['credited_end_to_end_per_s']:,.0f}/s | "
        f"{p['credited_end_to_end_per_s'] / b['pg_one_row_commit_per_s']:.2f} of one-row commit |",
        f"| POST → points.credited p50 / p99, saturated | {p['latency_p50_ms']:.0f} / "
        f"{p['latency_p99_ms']:.0f} ms | |",
        f"| POST → points.credited p50 / p99 / max, steady {p['paced_rate_per_s']:.0f}/s | "
        f"{p['paced_latency_p50_ms']:.0f} / {p['paced_latency_p99_ms']:.0f} / "
        f"{p['paced_latency_max_ms']:.0f} ms | |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="payments to measure")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--paced-rate", type=float, default=500, help="steady payments/s")
    args = parser.parse_args()
    outcome = uvloop.run(main(args.n, args.concurrency, args.paced_rate))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"payments-{stamp}.json").write_text(json.dumps(outcome, indent=2))
    print(report(outcome))
