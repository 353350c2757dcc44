"""`make chaos`: the long chaos run — a steady storm of signed payments (and some refunds)
through the whole path while, one after the other, every process of the payment path and
both servers (nats-server, PostgreSQL) are killed with SIGKILL and started again. Then it
waits for quiescence and runs the reconciliation.

Starts its own embedded PostgreSQL and nats-server (``mall_testing.embedded``, persistent
data dirs and fixed ports, so a killed server comes back with its data), the WeChat Pay
simulator in this process (retries on the platform's schedule, scaled down), and member,
points and the gateway as one process per role (tests/suite_processes.py).

A process that exits on its own (not one this run killed) is started again, as Kubernetes
would, and reported as a crash with the fault it followed: the path should survive its
servers' restarts without one.

Reported, per fault: what was killed, how long it was down, how long until the path worked
again (a probe payment posted right after the restart, until points credited it), and in
all: payments, refunds, notifications the platform had to send more than once, JetStream
redeliveries per durable consumer (deliveries beyond its subject's messages), and the
reconciliation's differences (zero is the only green; the exit code is 1 otherwise).
Results: bench/results/chaos-<time>.json.

    python bench/chaos.py [--rate 40] [--duration 90] [--gap 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import nats
import structlog
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the process machinery of the system tests (tests/)

from kit.migrations import migrate  # noqa: E402
from kit.proto import timestamp  # noqa: E402
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc  # noqa: E402
from mall_testing.demo import DemoMall, seed  # noqa: E402
from mall_testing.embedded import EmbeddedNats, EmbeddedPostgres, free_port  # noqa: E402
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS  # noqa: E402
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS  # noqa: E402
from wechatpay_simulator.app import serve  # noqa: E402
from wechatpay_simulator.state import DeliveryStatus  # noqa: E402

from tests.suite_processes import (  # noqa: E402
    DURABLES,
    Fleet,
    Replica,
    points_wechatpay_env,
    simulator_settings,
)

RESULTS = ROOT / "bench" / "results"
SHOPPERS = 200
REFUND_SHARE = 0.02
PROCESSES = (
    "gateway",
    "member-consume",
    "points-consume",
    "member-relay",
    "points-relay",
    "member-serve",
    "points-serve",
)
SERVERS = ("nats-server", "postgres")
POLL_S = 0.1
#: Bounded waits for one step (a restart, a probe, quiescence).
STEP_TIMEOUT_S = 180.0


@dataclass
class Fault:
    target: str
    killed_at: float
    down_s: float = 0.0
    recovered_s: float | None = None


@dataclass
class Storm:
    paid: dict[str, int] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)
    refused: Counter[int] = field(default_factory=Counter)


async def until(what: str, probe: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if await probe():
                return
        except (OSError, asyncpg.PostgresError, aiohttp.ClientError, nats.errors.Error):
            pass  # a server is down: the point of this run
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"timed out: {what}")


async def fetchval(dsn: str, sql: str, *args: object) -> Any:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def kill_server(server: EmbeddedPostgres | EmbeddedNats) -> None:
    """SIGKILL the server process itself (setpriv execs it: the pid is the server's)."""
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    server.stop()  # closes its log; a persistent base dir is kept


def restart_server(server: EmbeddedPostgres | EmbeddedNats) -> None:
    """Start it again on its port and data; PostgreSQL waits for its orphaned backends."""
    for attempt in range(50):
        try:
            server.start()
            return
        except RuntimeError:
            if attempt == 49:
                raise
            time.sleep(0.2)


async def main(base: Path, rate: float, duration_s: float, gap_s: float) -> dict[str, Any]:
    pg = EmbeddedPostgres(base / "pg", port=free_port(), stop_with_parent=False)
    ns = EmbeddedNats(base / "nats", port=free_port(), stop_with_parent=False)
    pg.start()
    ns.start()
    procs = Fleet(base, ns.url)
    outcome: dict[str, Any] = {}
    try:
        outcome = await storm(base, pg, ns, procs, rate, duration_s, gap_s)
        return outcome
    finally:
        await procs.kill_leftovers()
        ns.stop()
        pg.stop()
        clean = outcome and not outcome["reconciliation"]["differences"]
        if clean and not outcome["crashes"] and set(outcome["exit_codes"].values()) == {0}:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"logs and data kept in {base}", flush=True)


async def storm(
    base: Path,
    pg: EmbeddedPostgres,
    ns: EmbeddedNats,
    procs: Fleet,
    rate: float,
    duration_s: float,
    gap_s: float,
) -> dict[str, Any]:
    admin = await asyncpg.connect(pg.url)
    for name in ("member", "points"):
        await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    member_db, points_db = (pg.url.rsplit("/", 1)[0] + f"/{n}" for n in ("member", "points"))
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    member_grpc, points_grpc, gateway_port = free_port(), free_port(), free_port()
    mall = DemoMall.unique()
    key_dir = base / "wechatpay"
    notify_url = f"http://127.0.0.1:{gateway_port}/wechatpay/notifications/{mall.mchid}"
    sim_settings = simulator_settings(key_dir, mall, notify_url)
    start = datetime.now(UTC) - timedelta(seconds=1)
    faults: list[Fault] = []
    async with serve(sim_settings) as sim, aiohttp.ClientSession() as http:
        points_env = {"DATABASE_URL": points_db, **points_wechatpay_env(key_dir, sim.url)}
        await procs.start(
            "member-serve", "member", "serve", DATABASE_URL=member_db, GRPC_PORT=str(member_grpc)
        )
        await procs.start(
            "points-serve",
            "points",
            "serve",
            GRPC_PORT=str(points_grpc),
            # The reconciliation of a long storm reads every event since it began.
            GRPC_DEFAULT_DEADLINE_S="120",
            **points_env,
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
        rng = random.Random(20261126)
        shoppers = [f"o-storm-{uuid.uuid4().hex}" for _ in range(SHOPPERS)]
        state = Storm()

        async def pay(openid: str | None = None) -> str:
            store = rng.choice(mall.stores)
            amount = rng.randint(1, 200_000)
            body = {
                "appid": mall.appid,
                "mchid": mall.mchid,
                "shop_number": store.shop_number,
                "openid": openid or rng.choice(shoppers),
                "amount": amount,
            }
            async with http.post(f"{sim.url}/control/payments", json=body) as resp:
                tx = str((await resp.json())["transaction_id"])
            state.paid[tx] = amount
            return tx

        async def flow(stop: asyncio.Event) -> None:
            """A steady rate, whatever is down (the platform keeps notifying)."""
            begun, n = time.monotonic(), 0
            while not stop.is_set():
                await pay()
                n += 1
                if rng.random() < REFUND_SHARE:
                    synced = [
                        t
                        for t in state.paid
                        if t not in state.refunded and sim.state.points_synced(t)
                    ]
                    if synced:
                        tx = rng.choice(synced)
                        amount = rng.randint(1, state.paid[tx])
                        body = {"transaction_id": tx, "refund_amount": amount}
                        async with http.post(f"{sim.url}/control/refunds", json=body) as resp:
                            if resp.status == 202:
                                state.refunded[tx] = amount
                            else:
                                state.refused[resp.status] += 1
                await asyncio.sleep(max(0.0, begun + n / rate - time.monotonic()))

        async def probe(fault: Fault) -> None:
            """Until a payment notified now is credited: the path works again."""
            tx = await pay()

            async def credited() -> bool:
                found = await fetchval(
                    points_db,
                    "SELECT count(*) FROM ledger WHERE mall_id = $1 AND transaction_id = $2",
                    mall.mall_id,
                    tx,
                )
                return bool(found)

            await until(f"probe after {fault.target}", credited)
            fault.recovered_s = round(time.monotonic() - fault.killed_at, 3)

        crashes: list[dict[str, Any]] = []
        killing: set[str] = set()
        current = [""]  # the fault in progress, for the crash report

        async def served(replica: Replica) -> None:
            async def answers() -> bool:
                return bool(await procs.metrics(http, replica))

            await until(f"{replica.name} serving", answers)

        async def supervise() -> None:
            """What Kubernetes does for a process that exits on its own: start it again.
            Every such exit is a finding, reported as a crash with the fault it followed."""
            while True:
                for r in list(procs.replicas):
                    if r.name in killing or r.process.returncode is None:
                        continue
                    crash = {
                        "process": r.name,
                        "exit_code": r.process.returncode,
                        "after_fault": current[0],
                        "at_s": round(time.monotonic() - storm_started, 1),
                    }
                    crashes.append(crash)
                    print(json.dumps({"crashed": crash}), flush=True)
                    r.log_file.close()
                    await served(await procs.restart(r))
                await asyncio.sleep(0.5)

        async def chaos(stop: asyncio.Event) -> None:
            targets = [*PROCESSES, *SERVERS]
            for target in targets:
                await asyncio.sleep(gap_s)
                fault = Fault(target, time.monotonic())
                faults.append(fault)
                current[0] = target
                if target in SERVERS:
                    server: EmbeddedPostgres | EmbeddedNats = pg if target == "postgres" else ns
                    await asyncio.to_thread(kill_server, server)
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(restart_server, server)
                else:
                    killing.add(target)
                    [victim] = procs.named(target)
                    await procs.kill(victim)
                    await asyncio.sleep(1.0)
                    again: Replica = await procs.restart(victim)
                    killing.discard(target)
                    await served(again)
                fault.down_s = round(time.monotonic() - fault.killed_at, 3)
                await probe(fault)
                shown = {k: v for k, v in fault.__dict__.items() if k != "killed_at"}
                print(json.dumps(shown), flush=True)
            # The storm goes on for at least ``duration_s`` in all.
            await asyncio.sleep(max(0.0, storm_started + duration_s - time.monotonic()))
            stop.set()

        stop = asyncio.Event()
        storm_started = time.monotonic()
        supervisor = asyncio.create_task(supervise())
        await asyncio.gather(flow(stop), chaos(stop))
        storm_s = time.monotonic() - storm_started

        # Quiescence, then the proof.
        async def delivered() -> bool:
            return all(d.status == DeliveryStatus.DELIVERED for d in sim.state.deliveries.values())

        quiet_started = time.monotonic()
        await until("every notification acknowledged", delivered)
        nc = await nats.connect(ns.url)
        js = nc.jetstream()
        redelivered: dict[str, int] = {}
        for stream, durable in DURABLES:

            async def drained(stream: str = stream, durable: str = durable) -> bool:
                info = await js.consumer_info(stream, durable)
                subject = info.config.filter_subject or ">"
                held = await js.stream_info(stream, subjects_filter=subject)
                # Every delivery counts in delivered.consumer_seq, redeliveries too: what
                # exceeds the subject's messages was delivered more than once.
                deliveries = info.delivered.consumer_seq if info.delivered else 0
                messages = (held.state.subjects or {}).get(subject, 0)
                redelivered[durable] = int(deliveries or 0) - int(messages)
                return bool(info.num_pending == 0 and info.num_ack_pending == 0)

            await until(f"{durable} drained", drained)
        await nc.close()
        for db in (member_db, points_db):

            async def outbox(db: str = db) -> bool:
                return int(await fetchval(db, "SELECT count(*) FROM outbox")) == 0

            await until("outbox drained", outbox)

        async def synced() -> bool:
            left = await fetchval(
                points_db,
                "SELECT count(*) FROM wechat_points_sync WHERE mall_id = $1 AND state <> 'SENT'",
                mall.mall_id,
            )
            return int(left) == 0

        await until("every points report sent", synced)
        quiet_s = time.monotonic() - quiet_started
        reconcile_started = time.monotonic()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{points_grpc}") as channel:
            report = await points_service_pb2_grpc.ReconciliationServiceStub(
                channel
            ).ReconcilePayments(
                points_service_pb2.ReconcilePaymentsRequest(
                    mall_id=mall.mall_id,
                    start_time=timestamp(start),
                    end_time=timestamp(datetime.now(UTC) + timedelta(seconds=1)),
                ),
                timeout=120,
                wait_for_ready=True,
            )
        reconcile_s = time.monotonic() - reconcile_started
        attempts = Counter(len(d.attempts) for d in sim.state.deliveries.values())
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        codes = await procs.stop()
    return {
        "rate_per_s": rate,
        "storm_s": round(storm_s, 1),
        "quiescence_s": round(quiet_s, 1),
        "payments": len(state.paid),
        "refunds": len(state.refunded),
        "refunds_refused": dict(state.refused),
        "faults": [{k: v for k, v in f.__dict__.items() if k != "killed_at"} for f in faults],
        "crashes": crashes,
        "notifications_by_attempts": {str(k): v for k, v in sorted(attempts.items())},
        "notifications_redelivered": sum(n for a, n in attempts.items() if a > 1),
        "jetstream_redelivered": redelivered,
        "reconciliation": {
            "seconds": round(reconcile_s, 2),
            "payments_checked": report.payments_checked,
            "refunds_checked": report.refunds_checked,
            "sources": {s.name: [s.payments, s.refunds] for s in report.sources},
            "differences": [
                {
                    "kind": points_service_pb2.DifferenceKind.Name(d.kind),
                    "transaction_id": d.transaction_id,
                    "refund_id": d.refund_id,
                    "stage": d.stage,
                    "expected": d.expected,
                    "actual": d.actual,
                }
                for d in report.differences
            ],
        },
        "exit_codes": codes,
    }


def cli() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0, help="payments per second")
    parser.add_argument("--duration", type=float, default=90.0, help="storm at least (s)")
    parser.add_argument("--gap", type=float, default=8.0, help="seconds between faults")
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    # The in-process simulator logs every delivery at info: keep the report readable.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    base = Path(tempfile.mkdtemp(prefix="mall-chaos-"))
    base.chmod(0o755)  # PostgreSQL runs unprivileged and must reach its data dir below
    outcome = uvloop.run(main(base, args.rate, args.duration, args.gap))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"chaos-{stamp}.json"
    path.write_text(json.dumps(outcome, indent=2, ensure_ascii=False))
    differences = outcome["reconciliation"]["differences"]
    print(json.dumps({k: v for k, v in outcome.items() if k != "reconciliation"}, indent=1))
    print(
        f"reconciliation: {len(differences)} difference(s); "
        f"{len(outcome['crashes'])} crash(es); written to {path}"
    )
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(cli())
