"""`make bench` — the payment storm: signed, encrypted WeChat Pay notifications at a ladder of
offered rates through the whole path, beside same-run baselines.

Starts embedded PostgreSQL and nats-server (or DATABASE_URL / NATS_URL), the WeChat Pay
simulator, member, points (syncing points to the simulator) and the gateway (verifying every
notification's signature) as separate processes, seeds 3 malls with 50 tenants between them,
then per step of the ladder (250, 500, 1,000, 2,000, 4,000 payments/s by default) the
simulator's load mode (``/control/load/steps``) sends ``rate`` payments a second for the
step's duration, open loop, with 5 % refunds, 2 % re-deliveries and 1 % refunds sent before
their payment. Every notification of a step is signed before the step starts (RSA ≈ 470 µs
each: signing while sending would take a core from the path being measured).

Per step: offered and accepted payments/s, payment → ``points.points.credited`` p50/p99 (from
the moment each notification was due, so a slow path cannot hide in a slower offered rate),
sync lag to the platform (the simulator's points-sync receipt minus the credit), the backlog
at the end of the step (simulator notifications not yet acknowledged + outbox rows + consumer
pending; points reports not yet sent apart), CPU per process. A step *holds* when its
backlog did not grow (at the end: under 3 s of its payments, and no more than 1 s of them
above the first sample, 2 s in), ≥ 90 % of its payments were acknowledged by its end and it
drained within max(5 s, a quarter of the step) after its end; the ladder stops climbing at
the first step that does not hold. Then, once quiet, points' reconciliation for each mall
(zero differences is the only green: exit 1 otherwise).

Results: printed as a table and written to bench/results/storm-<time>.json.

    python bench/storm.py [--rates 250,500,1000,2000,4000] [--duration 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import nats
import uvloop
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.payments and the process helpers of the system tests

from kit.migrations import migrate  # noqa: E402
from kit.proto import timestamp  # noqa: E402
from mall.points.v1 import events_pb2 as points_events  # noqa: E402
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc  # noqa: E402
from mall_testing.demo import DemoMall, DemoStore, seed  # noqa: E402
from mall_testing.embedded import free_port  # noqa: E402
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS  # noqa: E402
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS  # noqa: E402

from bench.payments import (  # noqa: E402
    Replica,
    baselines,
    cpu_snapshot,
    cpu_used,
    create_database,
    percentile,
    servers,
    spawn,
    wait_http,
)
from tests.suite_processes import points_wechatpay_env  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RATES = (250, 500, 1000, 2000, 4000)
MCHID = "1900000109"
MALLS, TENANTS = 3, 50
SHOPPERS_PER_MALL = 2000
#: The streams of the payment path (their consumers' pending messages are backlog).
STREAMS = ("PAYMENTS", "MEMBER", "POINTS")
#: A backlog of more than this many seconds of a step's payments has grown (see run_step).
GROWN_S = 3.0
#: ... and a held step's notifications were acknowledged by its end, at least this share.
ACCEPTED_SHARE = 0.9


def storm_malls(tag: str) -> list[DemoMall]:
    """3 malls under one merchant (one appid each), 50 tenants with a store each."""
    malls = []
    for m in range(MALLS):
        count = TENANTS // MALLS + (1 if m < TENANTS % MALLS else 0)
        stores = tuple(
            DemoStore(
                f"t{m}-{t:02d}", f"Tenant {m}-{t:02d}", "food", f"s{m}-{t:02d}", f"SHOP-{m}-{t:02d}"
            )
            for t in range(count)
        )
        malls.append(
            DemoMall(
                mall_id=f"storm-{tag}-{m}",
                name=f"Storm Plaza {m}",
                appid=f"wxstorm{tag}{m}",
                brand_id=f"storm-brand-{m}",
                mchid=MCHID,
                stores=stores,
            )
        )
    return malls


def start_simulator(key_dir: Path, notify_url: str) -> tuple[Replica, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wechatpay_simulator",
            "--port",
            str(port),
            "--write-keys",
            str(key_dir),
            "--mchid",
            MCHID,
            "--notify-url",
            notify_url,
            "--retry-scale",
            "0.02",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return Replica("simulator", proc, 0), f"http://127.0.0.1:{port}"


class Path_:
    """The running path: its processes, databases, URLs, and how to read its backlog."""

    def __init__(
        self, procs: list[Replica], sim_url: str, dbs: dict[str, str], nats_url: str
    ) -> None:
        self.procs = procs
        self.sim_url = sim_url
        self.dbs = dbs
        self.nats_url = nats_url
        self.pools: dict[str, asyncpg.Pool] = {}
        self.js: Any = None
        self.nc: Any = None

    async def open(self) -> None:
        for name, url in self.dbs.items():
            self.pools[name] = await asyncpg.create_pool(url, min_size=1, max_size=2)
        self.nc = await nats.connect(self.nats_url)
        self.js = self.nc.jetstream()

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()
        if self.nc is not None:
            await self.nc.close()

    async def backlog(self, http: aiohttp.ClientSession, step_id: str | None) -> dict[str, int]:
        """What the path still owes: per stage, at this moment."""
        out: dict[str, int] = {}
        if step_id is not None:
            url = f"{self.sim_url}/control/load/steps/{step_id}?detail=progress"
            async with http.get(url) as resp:
                out["simulator_unacked"] = int((await resp.json())["unacked"])
        for name, pool in self.pools.items():
            out[f"{name}_outbox"] = int(await pool.fetchval("SELECT count(*) FROM outbox"))
        out["points_sync_unsent"] = int(
            await self.pools["points"].fetchval(
                "SELECT count(*) FROM wechat_points_sync WHERE state <> 'SENT'"
            )
        )
        pending = 0
        for stream in STREAMS:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                for info in await self.js.consumers_info(stream):
                    pending += info.num_pending + info.num_ack_pending
        out["consumer_pending"] = pending
        return out


def path_owed(backlog: dict[str, Any]) -> int:
    """What the payment path owes: notifications not acknowledged, outbox rows, consumer
    pending (not the points reports still to sync, nor the sample's time)."""
    return sum(v for k, v in backlog.items() if k not in ("t_s", "points_sync_unsent"))


async def sync_lags(
    http: aiohttp.ClientSession, sim_url: str, step: dict[str, Any], credited: dict[str, float]
) -> None:
    """Points-sync receipt (at the platform) minus credit, per payment of the step."""
    report = await call(
        http, "GET", f"{sim_url}/control/load/steps/{step['step_id']}?detail=payments"
    )
    lags = [
        (synced - credited[tx]) * 1000
        for tx, _due, _sent, _acked, synced in report["payments"]
        if synced is not None and tx in credited
    ]
    step["synced"] = len(lags)
    step["sync_lag_p50_ms"] = percentile(lags, 50) if lags else None
    step["sync_lag_p99_ms"] = percentile(lags, 99) if lags else None


async def synced_total(http: aiohttp.ClientSession, procs: list[Replica]) -> float:
    """Points reports the points process has sent to the platform so far (its /metrics)."""
    [points] = [r for r in procs if r.name == "points"]
    async with http.get(f"http://127.0.0.1:{points.metrics_port}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mall_wechat_points_sync_total" and sample.labels["outcome"] == "sent"
    )


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, expect: int = 200
) -> Any:
    async with http.request(method, url, json=body) as resp:
        answer = await resp.json()
        if resp.status != expect:
            raise RuntimeError(f"{method} {url}: {resp.status} {answer}")
        return answer


async def run_step(
    path: Path_,
    http: aiohttp.ClientSession,
    malls: list[DemoMall],
    credited: dict[str, float],
    server_pids: dict[str, int],
    rate: float,
    duration_s: float,
    drain_s: float,
) -> dict[str, Any]:
    body = {
        "rate": rate,
        "duration_s": duration_s,
        "malls": [{"appid": m.appid, "shops": [s.shop_number for s in m.stores]} for m in malls],
        "shoppers_per_mall": SHOPPERS_PER_MALL,
        "refund_share": 0.05,
        "redelivery_share": 0.02,
        "early_refund_share": 0.01,
    }
    created = await call(http, "POST", f"{path.sim_url}/control/load/steps", body, expect=201)
    step_id = created["step_id"]
    cpu_before = cpu_snapshot(path.procs, server_pids)
    synced_before = await synced_total(http, path.procs)
    started = await call(
        http, "POST", f"{path.sim_url}/control/load/steps/{step_id}/start", expect=202
    )
    t0 = float(started["started_at"])
    samples = []
    while time.time() < t0 + duration_s - 0.05:
        await asyncio.sleep(min(2.0, max(0.0, t0 + duration_s - time.time())))
        samples.append({"t_s": round(time.time() - t0, 2), **await path.backlog(http, step_id)})
    cpu = cpu_used(cpu_before, cpu_snapshot(path.procs, server_pids))
    window_s = time.time() - t0
    sync_per_s = (await synced_total(http, path.procs) - synced_before) / window_s
    end_backlog = samples[-1]
    # Drain: every notification of the step acknowledged, nothing owed on the payment path.
    # (Points reports still unsent are not waited for here: they are the sync's own backlog,
    # reported apart, and sent on while the next step runs.)
    drained_at = None
    deadline = time.time() + drain_s
    while time.time() < deadline:
        report = await call(
            http, "GET", f"{path.sim_url}/control/load/steps/{step_id}?detail=progress"
        )
        sent = report["status"] == "SENT" and report["unsent"] == report["unacked"] == 0
        if sent and not path_owed(await path.backlog(http, step_id)):
            drained_at = time.time()
            break
        await asyncio.sleep(0.5)
    report = await call(http, "GET", f"{path.sim_url}/control/load/steps/{step_id}?detail=payments")
    payments = report.pop("payments")
    end = t0 + duration_s
    latencies, not_credited = [], 0
    for tx, due, _sent, _acked, _synced in payments:
        at = credited.get(tx)
        if at is None:
            not_credited += 1
            continue
        latencies.append((at - due) * 1000)
    accepted = sum(1 for p in payments if p[3] is not None and p[3] <= end)
    owed = [path_owed(sample) for sample in samples]
    # Growing: more owed at the end than at the first sample by over a second of payments,
    # or more than GROWN_S seconds of them owed at all (a pipeline a few batches deep owes
    # well under a second's worth); and a held step drains soon after its end.
    growing = owed[-1] > rate * GROWN_S or (len(owed) > 1 and owed[-1] - owed[0] > rate)
    unsent = [sample["points_sync_unsent"] for sample in samples]
    drain = None if drained_at is None else drained_at - end
    held = (
        not growing
        and accepted >= ACCEPTED_SHARE * rate * duration_s
        and drain is not None
        and drain <= max(5.0, 0.25 * duration_s)
    )
    return {
        "offered_per_s": rate,
        "duration_s": duration_s,
        "planned": report["planned"],
        "prepare_s": report["prepare_s"],
        "send_lag_max_ms": report["send_lag_max_ms"],
        "accepted_per_s": accepted / duration_s,
        "ack_p50_ms": report["ack_p50_ms"],
        "ack_p99_ms": report["ack_p99_ms"],
        "credited": len(latencies),
        "not_credited": not_credited,
        "credit_p50_ms": percentile(latencies, 50) if latencies else None,
        "credit_p99_ms": percentile(latencies, 99) if latencies else None,
        "points_synced_per_s": sync_per_s,
        # Filled in once every report was sent (see sync_lags).
        "sync_lag_p50_ms": None,
        "sync_lag_p99_ms": None,
        "sync_growing": len(unsent) > 1 and unsent[-1] - unsent[0] > rate,
        "step_id": step_id,
        "backlog_end": end_backlog,
        "backlog_end_total": owed[-1],
        "growing": growing,
        "backlog_samples": samples,
        "drain_s": None if drain is None else round(drain, 2),
        "cpu_cores": {k: round(v / window_s, 3) for k, v in cpu.items()},
        "retried": report["retried"],
        "held": held,
    }


async def reconcile(points_grpc: str, malls: list[DemoMall], since: datetime) -> list[Any]:
    out = []
    async with grpc.aio.insecure_channel(points_grpc) as channel:
        stub = points_service_pb2_grpc.ReconciliationServiceStub(channel)
        for mall in malls:
            started = time.monotonic()
            answer = await stub.ReconcilePayments(
                points_service_pb2.ReconcilePaymentsRequest(
                    mall_id=mall.mall_id,
                    start_time=timestamp(since),
                    end_time=timestamp(datetime.now(UTC) + timedelta(seconds=1)),
                ),
                timeout=300,
                wait_for_ready=True,
            )
            out.append(
                {
                    "mall_id": mall.mall_id,
                    "seconds": round(time.monotonic() - started, 2),
                    "sources": {s.name: [s.payments, s.refunds] for s in answer.sources},
                    "differences": [
                        {
                            "kind": points_service_pb2.DifferenceKind.Name(d.kind),
                            "transaction_id": d.transaction_id,
                            "refund_id": d.refund_id,
                            "stage": d.stage,
                            "expected": d.expected,
                            "actual": d.actual,
                        }
                        for d in answer.differences
                    ],
                }
            )
    return out


async def storm(
    pg_url: str,
    nats_url: str,
    http: aiohttp.ClientSession,
    server_pids: dict[str, int],
    rates: list[int],
    duration_s: float,
    work: Path,
    sync_batch: int | None,
) -> dict[str, Any]:
    since = datetime.now(UTC) - timedelta(seconds=5)
    tag = uuid.uuid4().hex[:6]
    member_db = await create_database(pg_url, f"storm_member_{tag}")
    points_db = await create_database(pg_url, f"storm_points_{tag}")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    member_port, points_port, http_port = free_port(), free_port(), free_port()
    key_dir = work / "wechatpay"
    notify_url = f"http://127.0.0.1:{http_port}/wechatpay/notifications/{MCHID}"
    sim, sim_url = start_simulator(key_dir, notify_url)
    procs = [sim]
    path = Path_(procs, sim_url, {"member": member_db, "points": points_db}, nats_url)
    try:
        await wait_http(http, f"{sim_url}/healthz")
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
                {
                    **common,
                    "DATABASE_URL": points_db,
                    "GRPC_PORT": str(points_port),
                    "GRPC_DEFAULT_DEADLINE_S": "300",
                    **points_wechatpay_env(key_dir, sim_url),
                    "WECHATPAY_TIMEOUT_S": "5",
                    "WECHATPAY_SYNC_LEASE_S": "15",
                    **({"WECHATPAY_SYNC_BATCH_SIZE": str(sync_batch)} if sync_batch else {}),
                },
            )
        )
        procs.append(
            spawn(
                "gateway",
                ["-m", "gateway", "serve"],
                {
                    **common,
                    "HTTP_PORT": str(http_port),
                    "WECHATPAY_MERCHANTS_FILE": str(key_dir / "merchants.json"),
                    "MEMBER_GRPC_TARGET": f"127.0.0.1:{member_port}",
                    "POINTS_GRPC_TARGET": f"127.0.0.1:{points_port}",
                },
            )
        )
        for r in procs[1:]:
            await wait_http(http, f"http://127.0.0.1:{r.metrics_port}/metrics")
        await wait_http(http, f"http://127.0.0.1:{http_port}/readyz")
        malls = storm_malls(tag)
        for mall in malls:
            await seed(f"127.0.0.1:{member_port}", mall)
        await path.open()
        credited: dict[str, float] = {}

        async def on_credit(msg: Any) -> None:
            event = points_events.PointsCredited.FromString(msg.data)
            credited.setdefault(event.transaction_id, time.time())

        await path.nc.subscribe("points.points.credited", cb=on_credit)
        # Warm-up: the gateway's directory copy must know every shop before the ladder.
        warm = await run_step(path, http, malls, credited, server_pids, 50, 2, 120)
        if warm["not_credited"]:
            raise RuntimeError(f"warm-up: {warm['not_credited']} payments never credited")
        steps = []
        for rate in rates:
            step = await run_step(
                path, http, malls, credited, server_pids, rate, duration_s, max(60, 3 * duration_s)
            )
            steps.append(step)
            print(
                f"{rate}/s: held={step['held']} accepted={step['accepted_per_s']:.0f}/s", flush=True
            )
            if not step["held"]:
                break
        # Quiet: whatever the last step left, then the reconciliation of every mall.
        for _ in range(1200):
            if not any((await path.backlog(http, None)).values()):
                break
            await asyncio.sleep(0.5)
        for step in [warm, *steps]:
            await sync_lags(http, sim_url, step, credited)
        recon = await reconcile(f"127.0.0.1:{points_port}", malls, since)
        return {"warmup": warm, "steps": steps, "reconciliation": recon}
    finally:
        await path.close()
        for r in procs:
            r.proc.send_signal(signal.SIGTERM)
        for r in procs:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                r.proc.kill()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def row(s: dict[str, Any]) -> str:
    cpu = s["cpu_cores"]
    busiest = ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.05
    )
    return (
        f"| {s['offered_per_s']:,} | {s['accepted_per_s']:,.0f} "
        f"| {_ms(s['credit_p50_ms'])} / {_ms(s['credit_p99_ms'])} "
        f"| {_ms(s['sync_lag_p50_ms'])} / {_ms(s['sync_lag_p99_ms'])} "
        f"| {s['points_synced_per_s']:,.0f}{' (behind)' if s['sync_growing'] else ''} "
        f"| {s['backlog_end_total']:,} "
        f"| {'-' if s['drain_s'] is None else s['drain_s']} "
        f"| {'yes' if s['held'] else 'NO'} | {busiest} |"
    )


def report(result: dict[str, Any]) -> str:
    b = result["baselines"]
    lines = [
        f"baselines: empty aiohttp POST {b['aiohttp_empty_post_per_s']:,.0f}/s, empty grpc.aio "
        f"unary {b['grpc_empty_unary_per_s']:,.0f}/s, one-row commit "
        f"{b['pg_one_row_commit_per_s']:,.0f}/s, awaited JetStream publish "
        f"{b['jetstream_awaited_publish_per_s']:,.0f}/s",
        "",
        "| offered/s | accepted/s | → credited p50 / p99 ms | sync lag p50 / p99 ms "
        "| synced/s | path backlog at end | drain s | held | CPU cores by process |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row(s) for s in result["steps"]),
        "",
        f"highest rate held: {result['highest_held_per_s'] or 'none'}/s",
        "",
        "CPU per payment accepted, ms (process CPU seconds in the step / payments acknowledged "
        "in it); what "
        "the whole machine could carry if it did nothing else = cores / total:",
    ]
    for s in result["steps"]:
        per = {k: v * 1000 / s["accepted_per_s"] for k, v in s["cpu_cores"].items()}
        path_ms = sum(v for k, v in per.items() if k not in ("simulator", "client"))
        lines.append(
            f"  {s['offered_per_s']:,}/s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
            + f"; path (no simulator, no client) {path_ms:.2f} ms → "
            f"{result['cores'] * 1000 / path_ms:,.0f}/s on {result['cores']} cores"
        )
    for r in result["reconciliation"]:
        lines.append(
            f"reconciliation {r['mall_id']}: {len(r['differences'])} differences "
            f"(sources {r['sources']}, {r['seconds']} s)"
        )
    return "\n".join(lines)


async def main(
    rates: list[int], duration_s: float, baseline_n: int, sync_batch: int | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="storm-") as work:
        async with (
            servers() as (pg_url, nats_url, server_pids),
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(total=600),
            ) as http,
        ):
            base = await baselines(pg_url, nats_url, http, baseline_n, 64)
            result = await storm(
                pg_url, nats_url, http, server_pids, rates, duration_s, Path(work), sync_batch
            )
    held = [s["offered_per_s"] for s in result["steps"] if s["held"]]
    return {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "rates": rates,
        "step_duration_s": duration_s,
        "points_sync_batch": sync_batch or "service default",
        "baselines": base,
        **result,
        "highest_held_per_s": max(held) if held else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="payments/s per step")
    parser.add_argument("--duration", type=float, default=20, help="seconds per step")
    parser.add_argument(
        "--sync-batch", type=int, help="points' WECHATPAY_SYNC_BATCH_SIZE (default: its own)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--quick", action="store_true", help="2 short steps (100, 200/s, 3 s)")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    duration, baseline_n = args.duration, 3000
    if args.quick:
        rates, duration, baseline_n = [100, 200], 3.0, 500
    outcome = uvloop.run(main(rates, duration, baseline_n, args.sync_batch))
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.results / f"storm-{stamp}.json").write_text(json.dumps(outcome, indent=2))
    print(report(outcome))
    clean = all(not r["differences"] for r in outcome["reconciliation"])
    sys.exit(0 if clean else 1)
