"""Payment → "+N points" on the member's SSE stream: latency at a paced rate (issue 9).

Starts embedded PostgreSQL and nats-server (or uses DATABASE_URL / NATS_URL), ``member all``,
``points all`` and the gateway as separate processes (``bench/payments.py``'s helpers), seeds a
mall, joins M members through member's gRPC API and opens one ``GET /v1/me/events`` stream per
member with that member's own token (minted with the gateway's signing key, as
``POST /v1/session`` would issue it). Then, with one aiohttp client process:

* baseline: an empty aiohttp POST handler (``bench/empty_servers.py``), closed loop at C in
  flight (its ceiling on this box now), and open loop at the same paced rate (its latency);
* warm-up: W payments at a slow pace, every event awaited; then ``ANALYZE`` of member's and
  points' databases (a mall's tables have statistics; tables filled from empty inside
  autovacuum's naptime do not, and member then plans per-batch scans of the whole mall:
  ``--no-analyze`` keeps that, and the per-index counters below show it);
* idle: CPU of the same processes with the streams open and no payments (the fixed cost);
* measured: R payments/s for D seconds, **open loop** (each POST starts at its scheduled
  time whether or not earlier ones were answered; latency counts from the scheduled time, so
  a client or server falling behind is not hidden), payments spread round-robin over the
  members. For each payment: POST start → 204, → ``points.points.credited`` on NATS (the plain
  payment path, same payments, same run) and → the ``points`` event carrying its
  ``transaction_id`` on its member's stream (the "+N points" the shopper sees).

``--sweep 250,500,750`` adds one phase per rate on the same processes and streams (a row
each): where the goal is met on this box today.

Checks: every payment's event arrived, on its own member's stream only, once (a missing, a
misdelivered or a duplicated event is reported, and the run exits non-zero). Also reported:
the accepted rate (204s per second of posting), CPU seconds per process over the measured
window (gateway, member, points, PostgreSQL, nats-server, client — the ones this run
started), CPU ms per payment, seconds each part spent runnable but waiting for a CPU (summed
over its threads: how starved the box left it), this client's own event-loop lag, PostgreSQL
commits and per-table / per-index reads per payment, and the load average before and after.
Diagnosis only: ``--profile-gateway PATH`` (cProfile), ``--explain-slow-ms MS`` (auto_explain
plans, nested statements too, to the PostgreSQL server's log; with DATABASE_URL).

Results: a table, and bench/results/sse-latency-<time>.json.

    .venv/bin/python bench/sse_latency.py --sweep 250,500,750   # -m 2000 -r 1000 -d 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import grpc
import nats
import uvloop
from gateway.adapters.tokens import SessionTokens
from gateway.domain.shoppers import Session
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kit.migrations import migrate
from mall.points.v1 import events_pb2 as points_events
from mall_testing.demo import DemoMall, payment_notification, seed
from mall_testing.embedded import free_port
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS

if TYPE_CHECKING:  # mypy sees bench/ as a namespace package from the repository root
    from bench.gateway_card import join_members
    from bench.payments import (
        RESULTS,
        ROOT,
        Replica,
        _children,
        cpu_snapshot,
        cpu_used,
        create_database,
        percentile,
        rate,
        servers,
        spawn,
        wait_http,
    )
else:  # `python bench/sse_latency.py` puts bench/ itself on sys.path
    from gateway_card import join_members
    from payments import (
        RESULTS,
        ROOT,
        Replica,
        _children,
        cpu_snapshot,
        cpu_used,
        create_database,
        percentile,
        rate,
        servers,
        spawn,
        wait_http,
    )

#: Payment amount: enough fen for at least one point under the demo mall's rules (a credit of
#: zero points is not pushed).
AMOUNT_FEN = 10_000


def now() -> float:
    return time.perf_counter()


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def runqueue_wait(procs: list[Replica], servers: dict[str, int]) -> dict[str, dict[int, float]]:
    """Seconds each process's threads have spent runnable but waiting for a CPU
    (``/proc/<pid>/task/*/schedstat`` field 2; threads that ended are not counted), grouped as
    ``cpu_snapshot`` groups CPU time: how much the box starved each part."""
    groups: dict[str, list[int]] = {r.name: [r.proc.pid] for r in procs}
    if "postgres" in servers:
        groups["postgres"] = [servers["postgres"], *_children(servers["postgres"])]
    if "nats-server" in servers:
        groups["nats-server"] = [servers["nats-server"]]
    groups["client"] = [os.getpid()]
    waits: dict[str, dict[int, float]] = {}
    for name, pids in groups.items():
        waits[name] = {}
        for pid in pids:
            total = 0
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    with contextlib.suppress(OSError, IndexError, ValueError):
                        total += int((task / "schedstat").read_text().split()[1])
            waits[name][pid] = total / 1e9
    return waits


async def db_activity(url: str) -> dict[str, Any]:
    """Commits so far, and per table: sequential scans, rows they read, index scans, rows
    written — read before and after the measured window to see what each payment cost."""
    conn = await asyncpg.connect(url)
    try:
        commits = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        rows = await conn.fetch(
            "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) AS idx_scan,"
            " n_tup_ins + n_tup_upd + n_tup_del AS written FROM pg_stat_user_tables"
        )
        index_rows = await conn.fetch(
            "SELECT indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes"
        )
    finally:
        await conn.close()
    tables = {r["relname"]: {k: int(r[k]) for k in list(r.keys())[1:]} for r in rows}
    indexes = {
        r["indexrelname"]: {"idx_scan": int(r["idx_scan"]), "idx_tup_read": int(r["idx_tup_read"])}
        for r in index_rows
    }
    return {"commits": int(commits), "tables": tables, "indexes": indexes}


def db_delta(before: dict[str, Any], after: dict[str, Any], payments: int) -> dict[str, Any]:
    """Per payment: commits, and the tables' scans and writes (busiest first, zeros left out)."""
    tables = {}
    for name, counts in after["tables"].items():
        was = before["tables"].get(name, {})
        per = {k: round((v - was.get(k, 0)) / payments, 2) for k, v in counts.items()}
        if any(per.values()):
            tables[name] = per
    busiest = sorted(tables.items(), key=lambda kv: -(kv[1]["seq_tup_read"] + kv[1]["written"]))
    indexes = {}
    for name, counts in after["indexes"].items():
        was = before["indexes"].get(name, {})
        per = {k: round((v - was.get(k, 0)) / payments, 2) for k, v in counts.items()}
        if any(per.values()):
            indexes[name] = per
    return {
        "commits_per_payment": round((after["commits"] - before["commits"]) / payments, 2),
        "tables_per_payment": dict(busiest),
        "indexes_per_payment": dict(sorted(indexes.items(), key=lambda kv: -kv[1]["idx_scan"])),
    }


class LoopLag:
    """How late this client's event loop wakes a 5 ms sleep: the client's own share of any lag."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t = now()
            await asyncio.sleep(0.005)
            self.lags_ms.append((now() - t - 0.005) * 1000)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
        return stats(self.lags_ms)


def stats(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"count": 0}
    return {
        "count": len(values_ms),
        "p50_ms": round(percentile(values_ms, 50), 1),
        "p90_ms": round(percentile(values_ms, 90), 1),
        "p99_ms": round(percentile(values_ms, 99), 1),
        "max_ms": round(max(values_ms), 1),
    }


async def paced(
    total: int, per_s: float, one: Callable[[int, float], Coroutine[Any, Any, None]]
) -> float:
    """Open loop: start ``one(i, due)`` at ``start + i / per_s`` whatever is still in flight;
    wait for all; return the worst lag (s) of a start behind its schedule."""
    tasks: list[asyncio.Task[None]] = []
    start = now()
    worst_lag = 0.0
    i = 0
    while i < total:
        t = now()
        due = start + i / per_s
        if due > t:
            await asyncio.sleep(due - t)
            t = now()
        while i < total and start + i / per_s <= t:  # everything due by now
            due = start + i / per_s
            worst_lag = max(worst_lag, t - due)
            tasks.append(asyncio.create_task(one(i, due)))
            i += 1
    await asyncio.gather(*tasks)
    return worst_lag


@dataclass
class Tracker:
    """Arrivals of "+N points" per transaction, and what arrived where it should not."""

    owner: dict[str, int] = field(default_factory=dict)  # transaction_id → member index
    arrived: dict[str, float] = field(default_factory=dict)
    credited: dict[str, float] = field(default_factory=dict)
    misdelivered: int = 0
    duplicates: int = 0
    unknown: int = 0
    other_events: Counter[str] = field(default_factory=Counter)
    waiting: dict[str, asyncio.Future[None]] = field(default_factory=dict)

    def on_sse(self, member: int, event: str, data: bytes) -> None:
        if event != "points":
            self.other_events[event] += 1
            return
        body = json.loads(data)
        tid = body.get("transaction_id", "")
        if tid not in self.owner:
            self.unknown += 1
        elif self.owner[tid] != member:
            self.misdelivered += 1
        elif tid in self.arrived:
            self.duplicates += 1
        else:
            self.arrived[tid] = now()
            waiter = self.waiting.pop(tid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


async def read_stream(
    http: aiohttp.ClientSession, url: str, token: str, member: int, tracker: Tracker
) -> aiohttp.ClientResponse:
    """Open one member's stream, wait for ``ready``; then a task feeds the tracker."""
    resp = await http.get(url, headers={"Authorization": f"Bearer {token}"})
    if resp.status != 200:
        raise RuntimeError(f"events answered {resp.status}: {await resp.text()}")
    while not (await resp.content.readline()).startswith(b"event: ready"):
        pass
    while (await resp.content.readline()) not in (b"\n", b""):  # the rest of ``ready``
        pass

    async def pump() -> None:
        event = ""
        with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
            async for line in resp.content:
                if line.startswith(b"event: "):
                    event = line[7:].strip().decode()
                elif line.startswith(b"data: "):
                    tracker.on_sse(member, event, line[6:])
                elif line == b"\n":
                    event = ""

    resp._bench_pump = asyncio.create_task(pump())  # type: ignore[attr-defined]
    return resp


async def empty_baseline(
    session: aiohttp.ClientSession, n: int, concurrency: int, per_s: float, seconds: float
) -> dict[str, Any]:
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - started before anything is measured
        [sys.executable, str(ROOT / "bench" / "empty_servers.py"), str(http_port), str(grpc_port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        await asyncio.to_thread(proc.stdout.readline)
        url = f"http://127.0.0.1:{http_port}/empty"
        body = json.dumps({"hello": "world"}).encode()

        async def one(_: int) -> None:
            async with session.post(url, data=body) as resp:
                await resp.read()

        await rate(300, concurrency, one)
        closed_rate = await rate(n, concurrency, one)
        latencies: list[float] = []

        async def timed_one(_: int, due: float) -> None:
            await one(0)
            latencies.append((now() - due) * 1000)

        lag = await paced(round(per_s * seconds), per_s, timed_one)
    finally:
        proc.terminate()
        proc.wait()
    return {
        "closed_loop_per_s": round(closed_rate),
        "paced_per_s": per_s,
        "paced": stats(latencies),
        "paced_worst_start_lag_ms": round(lag * 1000, 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    m, per_s, seconds = args.members, args.rate, args.duration
    procs: list[Replica] = []
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "loadavg_before": loadavg(),
        "members": m,
        "rate_per_s": per_s,
        "duration_s": seconds,
    }
    post_connector = aiohttp.TCPConnector(limit=args.connections)
    async with (
        servers() as (pg_url, nats_url, server_pids),
        aiohttp.ClientSession(connector=post_connector) as session,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        ) as streams_http,
    ):
        result["baseline_empty_aiohttp"] = await empty_baseline(
            session, 10_000, 64, per_s, min(seconds, 5.0)
        )
        member_db = await create_database(pg_url, "bench_sse_member")
        points_db = await create_database(pg_url, "bench_sse_points")
        await migrate(member_db, MEMBER_MIGRATIONS)
        await migrate(points_db, POINTS_MIGRATIONS)
        if args.explain_slow_ms is not None:  # diagnosis: slow statements' plans to the log
            conn = await asyncpg.connect(pg_url)
            try:
                for db in ("bench_sse_member", "bench_sse_points"):
                    await conn.execute(
                        f"ALTER DATABASE {db} SET session_preload_libraries = 'auto_explain';"
                        f"ALTER DATABASE {db} SET auto_explain.log_min_duration = "
                        f"{int(args.explain_slow_ms)};"
                        f"ALTER DATABASE {db} SET auto_explain.log_analyze = on;"
                        f"ALTER DATABASE {db} SET auto_explain.log_nested_statements = on"
                    )
            finally:
                await conn.close()
        member_port, points_port, http_port = free_port(), free_port(), free_port()
        common = {"NATS_URL": nats_url}
        procs.append(
            spawn(
                "member",
                ["-m", "member", "all"],
                {**common, "DATABASE_URL": member_db, "GRPC_PORT": str(member_port)},
            )
        )
        procs.append(
            spawn(
                "points",
                ["-m", "points", "all"],
                {**common, "DATABASE_URL": points_db, "GRPC_PORT": str(points_port)},
            )
        )
        responses: list[aiohttp.ClientResponse] = []
        nc = await nats.connect(nats_url)
        try:
            for port in (member_port, points_port):  # a loaded box may take a while
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=120, wait_for_ready=True
                    )
            mall = await seed(f"127.0.0.1:{member_port}", DemoMall.unique())
            members = await join_members(member_port, mall, m)
            key = secrets.token_urlsafe(48)
            folder = Path(tempfile.mkdtemp(prefix="bench-sse-"))
            (folder / "miniprograms.json").write_text(json.dumps({mall.appid: "s" * 32}))
            profile = ["-m", "cProfile", "-o", args.profile_gateway] if args.profile_gateway else []
            gateway = spawn(
                "gateway",
                [*profile, "-m", "gateway", "serve"],
                {
                    **common,
                    "HTTP_PORT": str(http_port),
                    "WECHATPAY_ACCEPT_UNSIGNED": "true",  # the pipeline, not the signature
                    "MEMBER_GRPC_TARGET": f"127.0.0.1:{member_port}",
                    "POINTS_GRPC_TARGET": f"127.0.0.1:{points_port}",
                    "MINIPROGRAM_SECRETS_FILE": str(folder / "miniprograms.json"),
                    "SESSION_SIGNING_KEY": key,
                    "RATE_LIMIT_PER_IP": "",  # one client address makes all the load
                    "RATE_LIMIT_PER_MEMBER": "",
                },
            )
            procs.append(gateway)
            base = f"http://127.0.0.1:{http_port}"
            for r in procs:
                await wait_http(session, f"http://127.0.0.1:{r.metrics_port}/metrics")
            await wait_http(session, f"{base}/readyz")
            tokens = SessionTokens(key, access_ttl_s=7200, refresh_ttl_s=86_400)
            member_tokens = [
                tokens.issue(Session(mall.mall_id, openid, member_id)).access_token
                for openid, member_id in members
            ]

            tracker = Tracker()

            async def on_credit(msg: Any) -> None:
                event = points_events.PointsCredited.FromString(msg.data)
                tracker.credited.setdefault(event.transaction_id, now())

            await nc.subscribe("points.points.credited", cb=on_credit)

            # Every member's stream, each with its own token.
            sem = asyncio.Semaphore(100)
            url = f"{base}/v1/me/events"

            async def open_one(i: int) -> None:
                async with sem:
                    responses.append(
                        await read_stream(streams_http, url, member_tokens[i], i, tracker)
                    )

            opened = now()
            await asyncio.gather(*(open_one(i) for i in range(m)))
            result["streams_open"] = len(responses)
            result["streams_open_s"] = round(now() - opened, 2)
            result["gateway_rss_mb_with_streams"] = round(rss_mb(gateway.proc.pid), 1)

            total = args.warmup + sum(round(r * seconds) for r in [per_s, *args.sweep])
            notes = [
                payment_notification(
                    mall, openid=members[i % m][0], amount_fen=AMOUNT_FEN + i % 1000
                )
                for i in range(total)
            ]
            for i, note in enumerate(notes):
                tracker.owner[note["resource"]["transaction_id"]] = i % m
            posted: dict[str, float] = {}
            answered: dict[str, float] = {}
            due_at: dict[str, float] = {}
            refused: Counter[int] = Counter()
            webhook = f"{base}/wechatpay/notifications"

            async def post(i: int, due: float) -> None:
                note = notes[i]
                tid = note["resource"]["transaction_id"]
                due_at[tid] = due
                posted[tid] = now()
                async with session.post(webhook, json=note) as resp:
                    await resp.read()
                    if resp.status != 204:
                        refused[resp.status] += 1
                        return
                answered[tid] = now()

            async def wait_events(tids: list[str], limit_s: float) -> None:
                loop = asyncio.get_running_loop()
                futures = []
                for tid in tids:
                    if tid not in tracker.arrived:
                        tracker.waiting[tid] = fut = loop.create_future()
                        futures.append(fut)
                if futures:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.gather(*futures), limit_s)

            # Warm-up: slow, then every event awaited (connections, plans, caches).
            warm = [n["resource"]["transaction_id"] for n in notes[: args.warmup]]
            await paced(args.warmup, 100.0, lambda i, due: post(i, due))
            await wait_events(warm, 60)
            if refused or any(t not in tracker.arrived for t in warm):
                missing = sum(t not in tracker.arrived for t in warm)
                raise RuntimeError(f"warm-up: refused {dict(refused)}, {missing} events missing")

            # A mall's tables have statistics: fresh ones filled within the autovacuum naptime
            # would not, and their plans scan whole tables per batch (--no-analyze shows it).
            if args.analyze:
                for url_ in (member_db, points_db):
                    conn = await asyncpg.connect(url_)
                    try:
                        await conn.execute("ANALYZE")
                    finally:
                        await conn.close()
            result["analyzed_before_measuring"] = args.analyze
            # The client's own set-up (2,000 streams, every planned notification) stays out of
            # its collector's full passes, as the services keep theirs: a load generator that
            # pauses would be counted as the path's latency.
            gc.freeze()

            # Idle: the same processes and streams, no payments (heartbeats, polling relays
            # and consumers): the fixed cost that the measured window's CPU includes.
            if args.idle > 0:
                idle_before = cpu_snapshot(procs, server_pids)
                idle_started = now()
                await asyncio.sleep(args.idle)
                idle_cpu = cpu_used(idle_before, cpu_snapshot(procs, server_pids))
                idle_s = now() - idle_started
                result["idle_cpu_cores"] = {k: round(v / idle_s, 3) for k, v in idle_cpu.items()}

            dbs = {"member": member_db, "points": points_db}

            async def measure(per_s: float, first: int, count: int) -> dict[str, Any]:
                """One open-loop phase over ``notes[first:first + count]``."""
                out: dict[str, Any] = {"rate_per_s": per_s, "duration_s": count / per_s}
                measured = [n["resource"]["transaction_id"] for n in notes[first : first + count]]
                strays = (tracker.misdelivered, tracker.duplicates, tracker.unknown)
                refused_before = sum(refused.values())
                # The statistics collector reports at most every 500 ms: let earlier work settle.
                await asyncio.sleep(1.0)
                db_before = {k: await db_activity(u) for k, u in dbs.items()}
                cpu_before = cpu_snapshot(procs, server_pids)
                wait_before = runqueue_wait(procs, server_pids)
                lag = LoopLag()
                lag.start()
                out["loadavg_at_measure_start"] = loadavg()
                started = now()
                worst_lag = await paced(count, per_s, lambda i, due: post(first + i, due))
                posting_s = now() - started
                out["client_loop_lag"] = lag.stop()
                await wait_events(measured, args.wait)
                window_s = now() - started
                cpu = cpu_used(cpu_before, cpu_snapshot(procs, server_pids))
                waited = cpu_used(wait_before, runqueue_wait(procs, server_pids))
                out["loadavg_after"] = loadavg()
                await asyncio.sleep(1.0)  # a late duplicate or a stray event would show here

                ok = [t for t in measured if t in answered]
                got = [t for t in measured if t in tracker.arrived]
                credited = [t for t in measured if t in tracker.credited]
                out["payments"] = len(measured)
                out["accepted"] = len(ok)
                out["refused"] = sum(refused.values()) - refused_before
                out["accepted_per_s"] = round(len(ok) / posting_s, 1)
                out["posting_s"] = round(posting_s, 2)
                out["worst_start_lag_ms"] = round(worst_lag * 1000, 1)
                out["post_to_204"] = stats([(answered[t] - due_at[t]) * 1000 for t in ok])
                out["post_to_credited"] = stats(
                    [(tracker.credited[t] - due_at[t]) * 1000 for t in credited]
                )
                out["post_to_sse"] = stats([(tracker.arrived[t] - due_at[t]) * 1000 for t in got])
                out["credited_to_sse"] = stats(
                    [
                        (tracker.arrived[t] - tracker.credited[t]) * 1000
                        for t in got
                        if t in tracker.credited
                    ]
                )
                out["events"] = {
                    "expected": len(measured),
                    "arrived": len(got),
                    "missing": len(measured) - len(got),
                    "misdelivered": tracker.misdelivered - strays[0],
                    "duplicates": tracker.duplicates - strays[1],
                    "unknown": tracker.unknown - strays[2],
                    "credited_seen_on_nats": len(credited),
                    "other_events": dict(tracker.other_events),
                }
                out["cpu_s"] = {k: round(v, 2) for k, v in cpu.items()}
                await asyncio.sleep(1.0)
                out["db"] = {
                    k: db_delta(db_before[k], await db_activity(u), len(measured))
                    for k, u in dbs.items()
                }
                out["cpu_window_s"] = round(window_s, 2)
                out["runqueue_wait_s"] = {k: round(v, 2) for k, v in waited.items()}
                return out

            # Measured: open loop at the paced rate, then each --sweep rate for as long.
            main_count = round(per_s * seconds)
            result.update(await measure(per_s, args.warmup, main_count))
            first = args.warmup + main_count
            result["sweep"] = []
            for sweep_rate in args.sweep:
                count = round(sweep_rate * seconds)
                result["sweep"].append(await measure(sweep_rate, first, count))
                first += count
            result["goal_p99_ms"] = 250
        finally:
            for resp in responses:
                resp._bench_pump.cancel()  # type: ignore[attr-defined]
                resp.close()
            await nc.close()
            for p in procs:
                if p.proc.poll() is None:
                    p.proc.terminate()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(10)
    return result


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(r: dict[str, Any]) -> str:
    b, e = r["baseline_empty_aiohttp"], r["events"]

    def row(name: str, s: dict[str, float]) -> str:
        if not s.get("count"):
            return f"| {name} | 0 | | | | |"
        return (
            f"| {name} | {s['count']:,} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} "
            f"| {s['max_ms']} |"
        )

    cpu = r["cpu_s"]
    busy = sum(cpu.values()) / r["cpu_window_s"]
    lines = [
        f"{r['cores']} cores; load average {r['loadavg_before']} before, "
        f"{r['loadavg_at_measure_start']} at the measured start, {r['loadavg_after']} after",
        f"{r['members']:,} members, one open /v1/me/events stream each "
        f"(opened in {r['streams_open_s']} s; gateway RSS {r['gateway_rss_mb_with_streams']} MB); "
        f"{r['payments']:,} payments open loop at {r['rate_per_s']:,.0f}/s for "
        f"{r['duration_s']} s; tables "
        + ("ANALYZEd after the warm-up" if r.get("analyzed_before_measuring") else "not analyzed"),
        "",
        "| measure (ms from the POST's scheduled start) | count | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
        row(f"empty aiohttp POST, {b['paced_per_s']:,.0f}/s open loop (baseline)", b["paced"]),
        row("payment POST → 204 (JetStream-acked)", r["post_to_204"]),
        row("payment POST → points.points.credited on NATS", r["post_to_credited"]),
        row('payment POST → "+N points" on the member\'s SSE stream', r["post_to_sse"]),
        row("(points.credited → SSE event, the gateway's push)", r["credited_to_sse"]),
        "",
        f"empty aiohttp POST closed loop, 64 in flight: {b['closed_loop_per_s']:,}/s; "
        f"payments accepted {r['accepted_per_s']:,}/s ({r['accepted']:,} of {r['payments']:,}, "
        f"refused {r['refused'] or 'none'}); worst start lag {r['worst_start_lag_ms']} ms",
        f"events: {e['arrived']:,} of {e['expected']:,} arrived, missing {e['missing']}, "
        f"on another member's stream {e['misdelivered']}, duplicated {e['duplicates']}, "
        f"unknown {e['unknown']}; other events {e['other_events'] or 'none'}",
        f"goal: p99 ≤ {r['goal_p99_ms']} ms → "
        + ("met" if r["post_to_sse"].get("p99_ms", 1e9) <= r["goal_p99_ms"] else "NOT met"),
        "CPU seconds over the measured window ("
        + f"{r['cpu_window_s']} s, {busy:.2f} cores busy): "
        + ", ".join(f"{k} {v}" for k, v in cpu.items()),
        "CPU ms per payment: "
        + ", ".join(f"{k} {v / r['payments'] * 1000:.2f}" for k, v in cpu.items())
        + f"; total {sum(cpu.values()) / r['payments'] * 1000:.2f} ms",
        "idle (no payments, streams open), cores busy: "
        + ", ".join(f"{k} {v}" for k, v in r.get("idle_cpu_cores", {}).items()),
        "PostgreSQL commits per payment: "
        + ", ".join(f"{k} {v['commits_per_payment']}" for k, v in r["db"].items()),
        "seconds runnable but waiting for a CPU, same window: "
        + ", ".join(f"{k} {v}" for k, v in r["runqueue_wait_s"].items()),
        "client event loop lag over the posting (5 ms sleeps): "
        + ", ".join(f"{k} {v}" for k, v in r["client_loop_lag"].items() if k != "count"),
    ]
    phases = [r, *r.get("sweep", [])]
    if len(phases) > 1:
        lines += [
            "",
            "| rate /s | accepted /s | POST → 204 p50 / p99 | → credited p50 / p99 "
            "| → SSE p50 / p99 / max | events ok | waiting for CPU s | client lag max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for ph in phases:
            a, c, e2 = ph["post_to_204"], ph["post_to_credited"], ph["post_to_sse"]
            ev = ph["events"]
            clean = not (ev["missing"] or ev["misdelivered"] or ev["duplicates"])
            lines.append(
                f"| {ph['rate_per_s']:,.0f} | {ph['accepted_per_s']:,.0f} "
                f"| {a.get('p50_ms')} / {a.get('p99_ms')} "
                f"| {c.get('p50_ms')} / {c.get('p99_ms')} "
                f"| {e2.get('p50_ms')} / {e2.get('p99_ms')} / {e2.get('max_ms')} "
                f"| {ev['arrived']:,}/{ev['expected']:,}{'' if clean else ' !'} "
                f"| {sum(ph['runqueue_wait_s'].values()):.1f} in {ph['cpu_window_s']} "
                f"| {ph['client_loop_lag'].get('max_ms')} ms |"
            )
    return "\n".join(lines)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--members", type=int, default=2_000, help="members, one stream each")
    parser.add_argument("-r", "--rate", type=float, default=1_000, help="payments per second")
    parser.add_argument("-d", "--duration", type=float, default=10, help="seconds of payments")
    parser.add_argument("-w", "--warmup", type=int, default=300, help="warm-up payments")
    parser.add_argument("--connections", type=int, default=256, help="client POST connections")
    parser.add_argument("--idle", type=float, default=5, help="s of idle CPU measured first")
    parser.add_argument(
        "--profile-gateway",
        metavar="PATH",
        help="run the gateway under cProfile, stats to PATH (slows it: not for the figures)",
    )
    parser.add_argument(
        "--sweep",
        type=lambda v: [float(x) for x in v.split(",") if x],
        default=[],
        metavar="R1,R2,...",
        help="after the main rate, more phases at these rates (same processes and streams)",
    )
    parser.add_argument(
        "--explain-slow-ms",
        type=int,
        metavar="MS",
        help="log the plans of member's and points' statements slower than MS (auto_explain, "
        "to the PostgreSQL server's log; diagnosis only)",
    )
    parser.add_argument(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="do not ANALYZE member's and points' databases after the warm-up",
    )
    parser.add_argument("--wait", type=float, default=120, help="s to wait for the last events")
    args = parser.parse_args()
    result = uvloop.run(main(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"sse-latency-{stamp}.json").write_text(json.dumps(result, indent=2))
    print(report(result))
    for phase in [result, *result["sweep"]]:
        e = phase["events"]
        if e["missing"] or e["misdelivered"] or e["duplicates"] or phase["refused"]:
            sys.exit(1)


if __name__ == "__main__":
    cli()
