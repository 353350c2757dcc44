"""`make bench`: payments through the whole path, beside same-run baselines.

Starts embedded PostgreSQL and nats-server (or uses DATABASE_URL / NATS_URL), runs member,
points and the gateway as separate processes (as `make run` does), seeds a mall, then:

* baselines: an empty aiohttp POST, an empty grpc.aio unary call, a one-row PostgreSQL
  commit, an awaited JetStream publish — same machine, same run, same client concurrency;
* payments: N notifications posted to the gateway as fast as it takes them; payments/s
  accepted, payments/s credited end to end, and p50/p99 from POST to the
  ``points.points.credited`` event (the moment the shopper's "+N points" can be pushed).

``--replicas N`` runs the payment path with N replicas of each consumer, each relay and the
gateway (member and points: one ``all`` process plus N-1 ``consume`` and N-1 ``relay``
processes each; N gateways, POSTs round-robin over them). ``--compare-replicas`` runs the
payment phase with 1 and then 2 replicas, each on fresh databases and streams, beside the
same baselines, and prints both rows. Each process serves /metrics; the per-process
``handled`` counts show how the work split.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import nats
import nats.js.errors
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kit.migrations import migrate
from mall.points.v1 import events_pb2 as points_events
from mall_testing.demo import DemoMall, payment_notification, seed
from mall_testing.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from prometheus_client.parser import text_string_to_metric_families

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
async def servers() -> AsyncIterator[tuple[str, str, dict[str, int]]]:
    """PostgreSQL and NATS URLs, and the pids of the servers this run started (for CPU)."""
    pg_url, nats_url = os.environ.get("DATABASE_URL"), os.environ.get("NATS_URL")
    pids: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        if not pg_url:
            pg = stack.enter_context(EmbeddedPostgres(stop_with_parent=False))
            pg_url = pg.url
            if pg.process is not None:
                pids["postgres"] = pg.process.pid
        if not nats_url:
            ns = stack.enter_context(EmbeddedNats(stop_with_parent=False))
            nats_url = ns.url
            if ns.process is not None:
                pids["nats-server"] = ns.process.pid
        yield pg_url, nats_url, pids


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (Linux); empty if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _cpu_s(pid: int) -> float:
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS if fields else 0.0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_snapshot(procs: list[Replica], servers: dict[str, int]) -> dict[str, dict[int, float]]:
    """CPU seconds used so far, per process, grouped: each role process, PostgreSQL (the
    postmaster and its backends), nats-server, and this client. Only what this run started."""
    groups: dict[str, list[int]] = {r.name: [r.proc.pid] for r in procs}
    if "postgres" in servers:
        groups["postgres"] = [servers["postgres"], *_children(servers["postgres"])]
    if "nats-server" in servers:
        groups["nats-server"] = [servers["nats-server"]]
    groups["client"] = [os.getpid()]
    return {name: {pid: _cpu_s(pid) for pid in pids} for name, pids in groups.items()}


def cpu_used(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    """CPU seconds per group between two snapshots (a backend born meanwhile counts from 0)."""
    return {
        name: sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in pids.items())
        for name, pids in after.items()
    }


async def create_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@dataclass
class Replica:
    """One role process of the payment path, with its own Prometheus /metrics port."""

    name: str
    proc: subprocess.Popen[bytes]
    metrics_port: int


def spawn(name: str, args: list[str], env: dict[str, str]) -> Replica:
    metrics_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *args],
        env={
            **os.environ,
            **env,
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "json",
            "METRICS_PORT": str(metrics_port),
        },
        cwd=ROOT,
    )
    return Replica(name, proc, metrics_port)


def path_processes(
    replicas: int, member_db: str, points_db: str, nats_url: str
) -> tuple[list[Replica], list[int], int]:
    """The payment path with ``replicas`` of each consumer, relay and gateway.

    One ``all`` process per service (its gRPC API, relay and consumers, as ``make run``
    starts it) plus ``replicas - 1`` processes each of ``consume`` and ``relay``: one replica
    is exactly the layout the benchmark always measured, and the gRPC API (not on the
    payment path) stays single. Returns the processes, the gateways' HTTP ports and
    member's gRPC port.
    """
    member_port, points_port = free_port(), free_port()
    http_ports = [free_port() for _ in range(replicas)]
    common = {"NATS_URL": nats_url}
    member = {**common, "DATABASE_URL": member_db}
    points = {**common, "DATABASE_URL": points_db}
    procs = [
        spawn("member-all", ["-m", "member", "all"], {**member, "GRPC_PORT": str(member_port)}),
        spawn("points-all", ["-m", "points", "all"], {**points, "GRPC_PORT": str(points_port)}),
    ]
    for i in range(2, replicas + 1):
        for role in ("consume", "relay"):
            procs.append(spawn(f"member-{role}-{i}", ["-m", "member", role], member))
            procs.append(spawn(f"points-{role}-{i}", ["-m", "points", role], points))
    for i, http_port in enumerate(http_ports, start=1):
        procs.append(
            spawn(
                f"gateway-{i}",
                ["-m", "gateway", "serve"],
                {
                    **common,
                    "HTTP_PORT": str(http_port),
                    # The pipeline behind the webhook; bench/webhook.py measures the signed door.
                    "WECHATPAY_ACCEPT_UNSIGNED": "true",
                    "MEMBER_GRPC_TARGET": f"127.0.0.1:{member_port}",
                    "POINTS_GRPC_TARGET": f"127.0.0.1:{points_port}",
                },
            )
        )
    return procs, http_ports, member_port


async def handled_split(
    session: aiohttp.ClientSession, procs: list[Replica]
) -> dict[str, dict[str, int]]:
    """Per process: messages handled by each consumer (and in how many fetched batches),
    events published by its relay."""
    split: dict[str, dict[str, int]] = {}
    for r in procs:
        async with session.get(f"http://127.0.0.1:{r.metrics_port}/metrics") as resp:
            text = await resp.text()
        counts: dict[str, int] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "mall_consumer_messages_total"
                    and sample.labels.get("outcome") == "handled"
                ):
                    counts[sample.labels["consumer"]] = int(sample.value)
                elif sample.name == "mall_consumer_batch_seconds_count" and sample.value:
                    counts[f"{sample.labels['consumer']} batches"] = int(sample.value)
                elif sample.name == "mall_outbox_published_total" and (
                    "relay" in r.name or "all" in r.name
                ):
                    counts["outbox_published"] = int(sample.value)
        if counts:
            split[r.name] = counts
    return split


async def fresh_streams(nats_url: str) -> None:
    """Drop the payment path's streams, so a later phase starts as clean as the first."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for name in ("PAYMENTS", "MEMBER", "POINTS"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


async def wait_http(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(1200):
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
    replicas: int = 1,
    server_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    member_db = await create_database(pg_url, "bench_member")
    points_db = await create_database(pg_url, "bench_points")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    procs, http_ports, member_port = path_processes(replicas, member_db, points_db, nats_url)
    server_pids = server_pids or {}
    try:
        bases = [f"http://127.0.0.1:{port}" for port in http_ports]
        for r in procs:
            await wait_http(session, f"http://127.0.0.1:{r.metrics_port}/metrics")
        for base in bases:
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
        urls = [f"{base}/wechatpay/notifications" for base in bases]

        async def post(batch: list[dict[str, Any]], i: int) -> None:
            note = batch[i]
            sent[note["resource"]["transaction_id"]] = time.perf_counter()
            async with session.post(urls[i % len(urls)], json=note) as resp:
                if resp.status != 204:
                    raise RuntimeError(f"gateway answered {resp.status}: {await resp.text()}")

        await rate(len(warmup), concurrency, lambda i: post(warmup, i))
        for _ in range(600):
            if all(n["resource"]["transaction_id"] in credited for n in warmup):
                break
            await asyncio.sleep(0.05)
        cpu_before = cpu_snapshot(procs, server_pids)
        started = time.perf_counter()
        accepted_rate = await rate(len(measured), concurrency, lambda i: post(measured, i))
        ids = [n["resource"]["transaction_id"] for n in measured]
        for _ in range(12000):
            if all(t in credited for t in ids):
                break
            await asyncio.sleep(0.05)
        finished = max(credited[t] for t in ids)
        cpu_window_s = time.perf_counter() - started
        cpu = cpu_used(cpu_before, cpu_snapshot(procs, server_pids))
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
            "replicas": replicas,
            "processes": [r.name for r in procs],
            "split": await handled_split(session, procs),
            # The saturated phase, from the first POST until the last payment was credited
            # (a few polls past it): CPU seconds per process group, and the wall time.
            "cpu_s": cpu,
            "cpu_window_s": cpu_window_s,
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
        for r in procs:
            r.proc.send_signal(signal.SIGTERM)
        for r in procs:
            r.proc.wait(timeout=30)


async def main(
    n: int, concurrency: int, paced_rate: float, replica_counts: list[int]
) -> dict[str, Any]:
    async with (
        servers() as (pg_url, nats_url, server_pids),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session,
    ):
        base = await baselines(pg_url, nats_url, session, n, concurrency)
        runs = []
        for phase, replicas in enumerate(replica_counts):
            if phase:  # the streams the previous phase filled: this run's own
                await fresh_streams(nats_url)
            runs.append(
                await payments(
                    pg_url, nats_url, session, n, concurrency, paced_rate, replicas, server_pids
                )
            )
    outcome: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "concurrency": concurrency,
        "baselines": base,
        "payment_path": runs[0],
    }
    if len(runs) > 1:
        outcome["replica_runs"] = runs
    return outcome


def report(result: dict[str, Any]) -> str:
    b, p = result["baselines"], result["payment_path"]
    replicas = p.get("replicas", 1)
    gateways = "the gateway" if replicas == 1 else f"{replicas} gateways"
    lines = [
        "| measure | value | ratio |",
        "|---|---|---|",
        f"| empty aiohttp POST (baseline) | {b['aiohttp_empty_post_per_s']:,.0f}/s | 1 |",
        f"| empty grpc.aio unary (baseline) | {b['grpc_empty_unary_per_s']:,.0f}/s | |",
        f"| one-row PostgreSQL commit, pool 4 (baseline) | "
        f"{b['pg_one_row_commit_per_s']:,.0f}/s | |",
        f"| awaited JetStream publish (baseline) | "
        f"{b['jetstream_awaited_publish_per_s']:,.0f}/s | |",
        f"| payments accepted by {gateways} | {p['accepted_per_s']:,.0f}/s | "
        f"{p['accepted_per_s'] / b['aiohttp_empty_post_per_s']:.2f} of empty POST |",
        f"| payments credited end to end | {p['credited_end_to_end_per_s']:,.0f}/s | "
        f"{p['credited_end_to_end_per_s'] / b['pg_one_row_commit_per_s']:.2f} of one-row commit |",
        f"| POST → points.credited p50 / p99, saturated | {p['latency_p50_ms']:.0f} / "
        f"{p['latency_p99_ms']:.0f} ms | |",
        f"| POST → points.credited p50 / p99 / max, steady {p['paced_rate_per_s']:.0f}/s | "
        f"{p['paced_latency_p50_ms']:.0f} / {p['paced_latency_p99_ms']:.0f} / "
        f"{p['paced_latency_max_ms']:.0f} ms | |",
    ]
    runs = result.get("replica_runs")
    if runs:
        lines += ["", compare_report(runs)]
    return "\n".join(lines)


def compare_report(runs: list[dict[str, Any]]) -> str:
    """The payment path with 1, 2, ... replicas of each consumer, relay and gateway."""
    one = runs[0]
    lines = [
        "| replicas | processes | accepted | credited end to end | vs 1 replica "
        "| saturated p50 / p99 | steady p50 / p99 / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['replicas']} | {len(r['processes'])} | {r['accepted_per_s']:,.0f}/s "
            f"| {r['credited_end_to_end_per_s']:,.0f}/s "
            f"| {r['credited_end_to_end_per_s'] / one['credited_end_to_end_per_s']:.2f} "
            f"| {r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f} ms "
            f"| {r['paced_latency_p50_ms']:.0f} / {r['paced_latency_p99_ms']:.0f} / "
            f"{r['paced_latency_max_ms']:.0f} ms |"
        )
    lines += [
        "",
        "CPU per payment in the saturated phase (ms; cores busy = CPU seconds / wall seconds):",
    ]
    for r in runs:
        by_part: dict[str, float] = {}
        for name, seconds in r["cpu_s"].items():
            part = name.split("-")[0] if name.split("-")[0] in ("member", "points") else name
            part = "gateway" if part.startswith("gateway") else part
            by_part[part] = by_part.get(part, 0.0) + seconds
        per_payment = {k: v / r["payments"] * 1000 for k, v in by_part.items()}
        busy = sum(by_part.values()) / r["cpu_window_s"]
        lines.append(
            f"  {r['replicas']} replica(s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in per_payment.items())
            + f"; total {sum(per_payment.values()):.2f} ms, {busy:.2f} cores busy"
        )
    for r in runs:
        lines.append(f"\nwork split with {r['replicas']} replica(s), whole phase (per process):")
        lines += [f"  {name}: {json.dumps(counts)}" for name, counts in r["split"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="payments to measure")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--paced-rate", type=float, default=500, help="steady payments/s")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="replicas of each consumer, relay and the gateway on the payment path",
    )
    parser.add_argument(
        "--compare-replicas",
        action="store_true",
        help="run the payment phase with 1, then 2 (or --replicas) replicas, fresh databases each",
    )
    args = parser.parse_args()
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    counts = [1, max(2, args.replicas)] if args.compare_replicas else [args.replicas]
    outcome = uvloop.run(main(args.n, args.concurrency, args.paced_rate, counts))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"payments-{stamp}.json").write_text(json.dumps(outcome, indent=2))
    print(report(outcome))
