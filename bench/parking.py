"""The car park's gates through gRPC, beside a same-run baseline.

Starts embedded PostgreSQL and nats-server (or uses DATABASE_URL / NATS_URL), then:

* baseline: the empty grpc.aio unary (bench/empty_servers.py) with per-call latencies, at
  ``--concurrency`` in flight and paced at ``--quote-rate`` calls/s;
* ``python -m parking all`` in a subprocess on a fresh database (points off), a car-park
  credential as member publishes it, a fee schedule and a benefit policy (gold tier 2 h, spend
  every 100 yuan 1 h); half the vehicles are members with a tier and a payment today;
* entries + exits: ``--vehicles`` vehicles through the car-park simulator's gates (entry,
  exit quote, settlement: three RPCs each) at ``--concurrency`` in flight: vehicles/s;
* exit quotes at a fixed rate: ``--quotes`` QuoteExit calls for vehicles inside, fired open
  loop at ``--quote-rate`` per second (a call does not wait for the previous one): p50/p99.

Results: printed as a table and written to bench/results/parking-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import eventbus
import grpc
import nats
import uvloop
from carpark_simulator.gate import Gate
from carpark_simulator.plates import random_plate
from carpark_simulator.traffic import drive
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kit.credentials import hash_secret
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.migrations import migrate
from kit.proto import timestamp
from mall.member.v1 import directory_pb2
from mall.parking.v1 import parking_pb2 as pb
from mall.parking.v1 import parking_service_pb2 as api
from mall.parking.v1 import parking_service_pb2_grpc as stubs
from mall_testing.embedded import free_port
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:  # mypy sees bench/ as a namespace package from the repository root
    from bench.payments import RESULTS, ROOT, create_database, percentile, servers, spawn, wait_http
else:  # `python bench/parking.py` puts bench/ itself on sys.path
    from payments import RESULTS, ROOT, create_database, percentile, servers, spawn, wait_http

# This script is bench/parking.py, so `import parking` would find itself: name the service's
# migrations by path (the service runs as `python -m parking` in its own process).
MIGRATIONS = [
    eventbus.MIGRATIONS,
    ("parking", ROOT / "services" / "parking" / "parking" / "migrations"),
]
MALL = "bench-parking-mall"
CAR_PARK = "bench-p1"
GOAL_P99_MS = 30.0


def summary(latencies: list[float], elapsed_s: float) -> dict[str, float]:
    return {
        "per_s": len(latencies) / elapsed_s,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "p999_ms": percentile(latencies, 99.9),
        "max_ms": max(latencies),
        "over_30ms": sum(1 for x in latencies if x > GOAL_P99_MS) / len(latencies),
    }


async def closed_loop(
    n: int, concurrency: int, one: Callable[[int], Awaitable[Any]]
) -> dict[str, float]:
    counter = iter(range(n))
    latencies: list[float] = []

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await one(i)
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(latencies, time.perf_counter() - started)


async def open_loop(n: int, per_s: float, one: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    """Fire ``one(i)`` at a fixed rate whatever the answers take (no coordinated omission).
    Timed with perf_counter: uvloop's loop clock counts whole milliseconds."""
    latencies: list[float] = []

    async def timed(i: int, due: float) -> None:
        await one(i)
        latencies.append((time.perf_counter() - due) * 1000)  # from when it was due, not sent

    started = time.perf_counter()
    tasks = []
    for i in range(n):
        due = started + i / per_s
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(i, due)))
    await asyncio.gather(*tasks)
    return summary(latencies, time.perf_counter() - started)


async def empty_unary(n: int, concurrency: int, per_s: float) -> dict[str, Any]:
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

            await closed_loop(500, concurrency, one)
            return {
                "closed": await closed_loop(n, concurrency, one),
                "paced": await open_loop(n, per_s, one),
            }
    finally:
        proc.terminate()
        proc.wait()


async def seed(db: str, nats_url: str, target: str, members: list[tuple[str, str]]) -> str:
    """The credential (as member publishes it), tariff, policy and members; the credential."""
    secret, credential_id = uuid.uuid4().hex, f"cred-bench-{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(nats_url)
    try:
        credential = directory_pb2.Credential(
            mall_id=MALL,
            credential_id=credential_id,
            car_park_id=CAR_PARK,
            secret_hash=hash_secret(secret),
        )
        bucket = await open_bucket(nc.jetstream(), DIRECTORY_BUCKET)  # as member projects it
        await bucket.put(
            f"credential.{credential.mall_id}.{credential.credential_id}",
            credential.SerializeToString(),
        )
    finally:
        await nc.close()
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        admin = stubs.ParkingAdminServiceStub(channel)
        await admin.PutFeeSchedule(
            api.PutFeeScheduleRequest(
                schedule=pb.FeeSchedule(
                    mall_id=MALL,
                    car_park_id=CAR_PARK,
                    free_minutes=15,
                    unit_minutes=30,
                    unit_fee_fen=300,
                    daily_cap_fen=5000,
                    night_start_minute=22 * 60,
                    night_end_minute=7 * 60,
                    night_unit_fee_fen=100,
                    effective_from=timestamp(datetime(2020, 1, 1, tzinfo=UTC)),
                )
            )
        )
        await admin.PutParkingPolicy(
            api.PutParkingPolicyRequest(
                policy=pb.ParkingPolicy(
                    mall_id=MALL,
                    tier_benefits=[pb.TierBenefit(tier_code="gold", free_minutes=120)],
                    spend_step_fen=10_000,
                    spend_step_minutes=60,
                    spend_max_minutes=240,
                )
            )
        )
    now = datetime.now(UTC)
    conn = await asyncpg.connect(db)
    try:
        ids = [str(uuid.uuid4()) for _ in members]
        await conn.executemany(
            """INSERT INTO plates (mall_id, plate_number, member_id, plate_color)
               VALUES ($1, $2, $3, $4)""",
            [(MALL, plate, mid, color) for (plate, color), mid in zip(members, ids, strict=True)],
        )
        await conn.executemany(
            "INSERT INTO member_tiers (mall_id, member_id, tier_code, as_of) VALUES ($1,$2,$3,$4)",
            [(MALL, mid, "gold", now) for mid in ids[::2]],
        )
        await conn.executemany(
            """INSERT INTO member_payments (mall_id, transaction_id, member_id, amount_fen,
                   paid_at) VALUES ($1, $2, $3, $4, $5)""",
            [(MALL, uuid.uuid4().hex, mid, 15_000, now - timedelta(minutes=5)) for mid in ids],
        )
    finally:
        await conn.close()
    presented = f"{credential_id}.{secret}"
    await credential_known(target, presented)
    return presented


async def credential_known(target: str, presented: str) -> None:
    """Wait until parking's copy of the directory holds the credential (a call gets past the
    credential check: NOT_FOUND for a session that does not exist)."""
    async with grpc.aio.insecure_channel(target) as channel:
        gates = stubs.CarParkServiceStub(channel)
        for _ in range(400):
            try:
                await gates.SettleExit(
                    api.SettleExitRequest(
                        mall_id=MALL,
                        car_park_id=CAR_PARK,
                        session_id=str(uuid.uuid4()),
                        quote_id=str(uuid.uuid4()),
                        payment_method=pb.PAYMENT_METHOD_CASH,
                    ),
                    metadata=(("x-mall-credential", presented),),
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError("the credential never reached parking")


QUOTE_METHOD = "/mall.parking.v1.CarParkService/QuoteExit"


async def quote_buckets(metrics_url: str) -> dict[float, float]:
    """The server's own QuoteExit handling-time histogram: upper bound (s) -> calls so far."""
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as resp:
        text = await resp.text()
    found: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "mall_grpc_request_duration_seconds_bucket"
                and sample.labels.get("method") == QUOTE_METHOD
            ):
                found[float(sample.labels["le"])] = sample.value
    return found


def server_p99_bound_ms(before: dict[float, float], after: dict[float, float]) -> float:
    """The histogram bucket holding the server-side p99 of the calls between two scrapes."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    for le, cumulative in counts:
        if total and cumulative >= 0.99 * total:
            return le * 1000
    return float("inf")


async def outbox_drained(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        for _ in range(600):
            if not await conn.fetchval("SELECT count(*) FROM outbox"):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("the outbox never drained")
    finally:
        await conn.close()


def plates(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    found: dict[str, str] = {}
    while len(found) < n:
        plate, color = random_plate(rng, new_energy=rng.random() < 0.2)
        found[plate] = color
    return list(found.items())


async def gates(
    pg_url: str, nats_url: str, vehicles: int, quotes: int, concurrency: int, per_s: float
) -> dict[str, Any]:
    db = await create_database(pg_url, "bench_parking")
    await migrate(db, MIGRATIONS)
    port = free_port()
    server = spawn(
        "parking-all",
        ["-m", "parking", "all"],
        {
            "DATABASE_URL": db,
            "NATS_URL": nats_url,
            "GRPC_PORT": str(port),
            "POINTS_GRPC_TARGET": "",
            "DB_POOL_MIN": "16",  # opened before measuring, as a production pod would
            "DB_POOL_MAX": "16",
        },
    )
    target = f"127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_http(session, f"http://127.0.0.1:{server.metrics_port}/metrics")
        pool = plates(vehicles + quotes, seed=5)
        members = pool[::2]
        credential = await seed(db, nats_url, target, members)
        async with grpc.aio.insecure_channel(target) as channel:
            gate = Gate(channel, mall_id=MALL, car_park_id=CAR_PARK, credential=credential)
            started = time.perf_counter()
            traffic = await drive(
                gate, cars=vehicles, concurrency=concurrency, known_plates=pool[:vehicles], seed=1
            )
            elapsed = time.perf_counter() - started
            if traffic.errors:
                raise RuntimeError(f"{traffic.errors} vehicles failed")
            inside = pool[vehicles : vehicles + quotes]
            now = datetime.now(UTC)

            async def enter(i: int) -> None:
                plate, color = inside[i]
                await gate.enter(plate, color, now - timedelta(minutes=30 + i % 400))

            entries = await closed_loop(len(inside), concurrency, enter)
            await outbox_drained(db)  # the relay's publishing is not part of the quote figure
            exit_at = datetime.now(UTC)

            async def quote(i: int) -> None:
                reply = await gate.quote(inside[i][0], exit_at)
                if reply.session.entry_missing:
                    raise RuntimeError(f"{inside[i][0]} has no entry")

            warm = min(200, quotes)
            await closed_loop(warm, 8, quote)
            metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            before = await quote_buckets(metrics_url)
            paced = await open_loop(quotes, per_s, quote)
            paced["server_p99_bucket_ms"] = server_p99_bound_ms(
                before, await quote_buckets(metrics_url)
            )
        return {
            "vehicles": vehicles,
            "concurrency": concurrency,
            "vehicles_per_s": vehicles / elapsed,
            "rpc_per_s": 3 * vehicles / elapsed,
            "traffic": traffic.as_dict(),
            "entries": entries,
            "quote_rate": per_s,
            "quotes": paced,
        }
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)


async def main(
    vehicles: int, quotes: int, concurrency: int, per_s: float, baseline_n: int
) -> dict[str, Any]:
    async with servers() as (pg_url, nats_url, _):
        base = await empty_unary(baseline_n, concurrency, per_s)
        run = await gates(pg_url, nats_url, vehicles, quotes, concurrency, per_s)
    return {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "baseline_grpc_empty_unary": base,
        "parking": run,
    }


def report(result: dict[str, Any]) -> str:
    base, run = result["baseline_grpc_empty_unary"], result["parking"]
    closed, paced, q = base["closed"], base["paced"], run["quotes"]
    c, rate = run["concurrency"], run["quote_rate"]
    return "\n".join(
        [
            "| measure | value | ratio | p50 / p99 |",
            "|---|---|---|---|",
            f"| empty grpc.aio unary, {c} in flight (baseline) | {closed['per_s']:,.0f}/s | 1 | "
            f"{closed['p50_ms']:.1f} / {closed['p99_ms']:.1f} ms |",
            f"| empty grpc.aio unary at {rate:,.0f}/s (baseline) | {paced['per_s']:,.0f}/s | | "
            f"{paced['p50_ms']:.1f} / {paced['p99_ms']:.1f} ms |",
            f"| vehicles in and out (entry + quote + settle), {c} in flight | "
            f"{run['vehicles_per_s']:,.0f} vehicles/s = {run['rpc_per_s']:,.0f} RPC/s | "
            f"{run['rpc_per_s'] / closed['per_s']:.2f} of empty unary | |",
            f"| RecordEntry alone, {c} in flight | {run['entries']['per_s']:,.0f}/s | | "
            f"{run['entries']['p50_ms']:.1f} / {run['entries']['p99_ms']:.1f} ms |",
            f"| QuoteExit at {rate:,.0f}/s, half members (goal p99 <= {GOAL_P99_MS:.0f} ms) | "
            f"{q['per_s']:,.0f}/s | {q['over_30ms']:.1%} over 30 ms | "
            f"{q['p50_ms']:.1f} / {q['p99_ms']:.1f} ms (p90 {q['p90_ms']:.1f}; server-side "
            f"p99 <= {q['server_p99_bucket_ms']:.0f} ms) |",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=3_000, help="vehicles in and out")
    parser.add_argument("--quotes", type=int, default=5_000, help="paced QuoteExit calls")
    parser.add_argument("--quote-rate", type=float, default=500.0, help="QuoteExit calls/s")
    parser.add_argument("-c", "--concurrency", type=int, default=32, help="RPCs in flight")
    parser.add_argument("--baseline-n", type=int, default=5_000, help="calls per baseline")
    args = parser.parse_args()
    outcome = uvloop.run(
        main(args.vehicles, args.quotes, args.concurrency, args.quote_rate, args.baseline_n)
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"parking-{stamp}.json").write_text(json.dumps(outcome, indent=2))
    print(report(outcome))
