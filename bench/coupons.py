"""The coupons service alone: the flash grab (抢券) through the batch claim RPC, and POS
redemption (核销), each beside an empty grpc.aio unary call measured in the same run.

Starts embedded PostgreSQL and nats-server (or uses DATABASE_URL / NATS_URL), then
``python -m coupons serve`` in a subprocess on a fresh database, with a tenant, its store and
a tenant credential written to the DIRECTORY key-value bucket (as member writes them):

* baseline: the empty grpc.aio unary call (bench/empty_servers.py) with per-call latencies at
  ``--concurrency`` in flight;
* flash grab: one stock of ``--coupons`` coupons (one per member) opening to ``--shoppers``
  shoppers, plus ``--repeat`` presses by shoppers pressing again, sent in random order as
  ClaimCoupons batches of ``--batch`` claims with ``--batches-in-flight`` calls at once (what
  the gateway's coalescer sends). Claims/s over the whole grab, per-claim latency p50/p99 (a
  claim waits for its batch's answer), and the proof from the database: exactly ``--coupons``
  coupons, oversold = 0, no member holding two;
* redemption: ``-k`` coupons claimed per way, then ``--rounds`` rounds alternating the empty
  unary call (a second empty server kept up for this), RedeemCoupon with the tenant
  credential at ``--concurrency`` in flight, and RedeemCoupons with ``--concurrency`` tills
  each keeping its stream open and redeeming one coupon at a time, so all three see the same
  machine: redemptions/s, p50/p99, ratio to the empty unary call.

Results: printed as a table and written to bench/results/coupons-<time>.json.
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
import grpc
import nats
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kit.credentials import hash_secret
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.proto import timestamp
from mall.coupons.v1 import coupons_pb2 as cpb
from mall.coupons.v1 import coupons_service_pb2 as pb
from mall.coupons.v1 import coupons_service_pb2_grpc as pb_grpc
from mall.member.v1 import directory_pb2
from mall_testing.embedded import free_port

if TYPE_CHECKING:  # mypy sees bench/ as a namespace package from the repository root
    from bench.consumers import grpc_empty_unary, latency_summary, timed
    from bench.payments import RESULTS, ROOT, create_database, servers, spawn, wait_http
else:  # `python bench/coupons.py` puts bench/ itself on sys.path
    from consumers import grpc_empty_unary, latency_summary, timed
    from payments import RESULTS, ROOT, create_database, servers, spawn, wait_http

MALL = "bench-coupons-mall"
TENANT = "bench-coffee"
STORE = "bench-coffee-1"


async def publish_directory(nats_url: str) -> tuple[tuple[str, str], ...]:
    """The store and a tenant credential in the DIRECTORY bucket; the credential metadata."""
    nc = await nats.connect(nats_url)
    try:
        kv = await open_bucket(nc.jetstream(), DIRECTORY_BUCKET)
        store = directory_pb2.Store(mall_id=MALL, tenant_id=TENANT, store_id=STORE)
        await kv.put(f"store.{MALL}.{STORE}", store.SerializeToString())
        credential_id, secret = f"cred-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
        credential = directory_pb2.Credential(
            mall_id=MALL,
            credential_id=credential_id,
            tenant_id=TENANT,
            secret_hash=hash_secret(secret),
        )
        await kv.put(f"credential.{MALL}.{credential_id}", credential.SerializeToString())
    finally:
        await nc.close()
    return (("x-mall-credential", f"{credential_id}.{secret}"),)


async def directory_ready(
    stub: pb_grpc.CouponsServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
) -> None:
    """Until the service's directory mirror knows the credential and the store."""
    probe = pb.RedeemCouponRequest(
        mall_id=MALL, coupon_id="0", store_id=STORE, use_request_id="probe"
    )
    for _ in range(400):
        try:
            await stub.RedeemCoupon(probe, metadata=metadata, timeout=5, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return
        await asyncio.sleep(0.05)
    raise RuntimeError("the coupons service never saw the bench directory")


async def create_stock(stub: pb_grpc.CouponsServiceAsyncStub, coupons: int, per_member: int) -> str:
    now = datetime.now(UTC)
    answer = await stub.CreateStock(
        pb.CreateStockRequest(
            stock=cpb.Stock(
                mall_id=MALL,
                tenant_id=TENANT,
                title="满100减50 flash",
                coupon_type=cpb.COUPON_TYPE_FIXED_AMOUNT,
                discount_fen=5000,
                threshold_fen=10000,
                max_coupons=coupons,
                max_per_member=per_member,
                claim_starts_at=timestamp(now - timedelta(minutes=1)),
                claim_ends_at=timestamp(now + timedelta(days=1)),
                valid_days=7,
            ),
            request_id=str(uuid.uuid4()),
        ),
        timeout=10,
        wait_for_ready=True,
    )
    return answer.stock.stock_id


async def flash_grab(
    stub: pb_grpc.CouponsServiceAsyncStub,
    db: str,
    shoppers: int,
    coupons: int,
    repeat: int,
    batch: int,
    in_flight: int,
) -> dict[str, Any]:
    stock_id = await create_stock(stub, coupons, per_member=1)
    members = [str(uuid.uuid4()) for _ in range(shoppers)]
    presses = members + random.sample(members, repeat)
    random.shuffle(presses)
    claims = [
        pb.ClaimCouponRequest(
            mall_id=MALL, stock_id=stock_id, member_id=m, request_id=str(uuid.uuid4())
        )
        for m in presses
    ]
    batches = [claims[i : i + batch] for i in range(0, len(claims), batch)]
    outcomes: dict[int, int] = {}
    latencies: list[float] = []
    sold_out_latencies: list[float] = []

    last_claimed = 0.0

    async def send(i: int) -> None:
        nonlocal last_claimed
        t0 = time.perf_counter()
        answer = await stub.ClaimCoupons(pb.ClaimCouponsRequest(claims=batches[i]), timeout=30)
        done = time.perf_counter()
        ms = (done - t0) * 1000
        kinds = set()
        for r in answer.results:
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
            kinds.add(r.outcome)
        latencies.extend([ms] * len(answer.results))
        if pb.CLAIM_OUTCOME_CLAIMED in kinds:
            last_claimed = max(last_claimed, done)
        if kinds == {pb.CLAIM_OUTCOME_SOLD_OUT}:
            sold_out_latencies.extend([ms] * len(answer.results))

    started = time.perf_counter()
    await timed(len(batches), in_flight, send)
    elapsed = time.perf_counter() - started
    conn = await asyncpg.connect(db)
    try:
        row = await conn.fetchrow(
            """SELECT count(*) AS coupons, count(DISTINCT member_id) AS members,
                      (SELECT claimed FROM stocks WHERE mall_id = $1 AND stock_id = $2) AS counter
                 FROM coupons WHERE mall_id = $1 AND stock_id = $2""",
            MALL,
            stock_id,
        )
    finally:
        await conn.close()
    assert row is not None
    claimed = outcomes.get(pb.CLAIM_OUTCOME_CLAIMED, 0)
    result = {
        "shoppers": shoppers,
        "coupons": coupons,
        "claims": len(claims),
        "batch": batch,
        "batches_in_flight": in_flight,
        "claims_per_s": len(claims) / elapsed,
        "sold_out_after_ms": (last_claimed - started) * 1000,
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
        "sold_out_p99_ms": _pct(sold_out_latencies, 99) if sold_out_latencies else None,
        "answered_claimed": claimed,
        "answered_sold_out": outcomes.get(pb.CLAIM_OUTCOME_SOLD_OUT, 0),
        "answered_limit_reached": outcomes.get(pb.CLAIM_OUTCOME_LIMIT_REACHED, 0),
        "db_coupons": row["coupons"],
        "db_counter": row["counter"],
        "oversold": max(0, row["coupons"] - coupons),
        "duplicates": row["coupons"] - row["members"],
    }
    if claimed != coupons or row["coupons"] != coupons or row["counter"] != coupons:
        raise RuntimeError(f"flash grab did not end with exactly {coupons} claimed: {result}")
    if result["duplicates"]:
        raise RuntimeError(f"a shopper holds two coupons: {result}")
    return result


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _shifted(
    one: Callable[[int], Awaitable[None]], offset: int
) -> Callable[[int], Awaitable[None]]:
    return lambda i: one(offset + i)


class Tills:
    """One RedeemCoupons stream per till, opened once (a till stays connected): each worker of
    ``timed`` takes an idle till, redeems one coupon on it and gives it back."""

    def __init__(
        self, stub: pb_grpc.CouponsServiceAsyncStub, metadata: tuple[tuple[str, str], ...], n: int
    ) -> None:
        self._idle: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(n):
            # Written to as it goes: no request iterator (grpc's type stubs want one).
            self._idle.put_nowait(stub.RedeemCoupons(metadata=metadata))  # type: ignore[call-arg]

    async def redeem(self, request: pb.RedeemCouponRequest) -> pb.RedeemCouponsResponse:
        till = self._idle.get_nowait()
        try:
            await till.write(request)
            answer: pb.RedeemCouponsResponse = await till.read()
        finally:
            self._idle.put_nowait(till)
        return answer

    async def close(self) -> None:
        while not self._idle.empty():
            till = self._idle.get_nowait()
            await till.done_writing()
            await till.code()  # the server ends its side once ours is done


async def redemption(
    stub: pb_grpc.CouponsServiceAsyncStub,
    db: str,
    metadata: tuple[tuple[str, str], ...],
    empty: health_pb2_grpc.HealthStub,
    k: int,
    concurrency: int,
    rounds: int,
    only: str | None = None,
) -> dict[str, Any]:
    """RedeemCoupon, RedeemCoupons (a stream per till) and the empty unary call in alternating
    rounds, so that all see the same machine (other work on a shared box moves the figures by
    2x within a minute)."""
    warmup = 200
    per_way = k + warmup
    stock_id = await create_stock(stub, 2 * per_way, per_member=0)
    coupon_ids: list[str] = []
    claims = [
        pb.ClaimCouponRequest(
            mall_id=MALL, stock_id=stock_id, member_id=str(uuid.uuid4()), request_id="r"
        )
        for _ in range(2 * per_way)
    ]
    for i in range(0, len(claims), 500):
        answer = await stub.ClaimCoupons(pb.ClaimCouponsRequest(claims=claims[i : i + 500]))
        coupon_ids.extend(r.coupon.coupon_id for r in answer.results)

    # The tables went from empty to thousands of rows in seconds: give the planner the
    # statistics autovacuum keeps for a table in service (else a stale estimate can pick a
    # scan of all available coupons over the primary key).
    conn = await asyncpg.connect(db)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()

    def use(i: int) -> pb.RedeemCouponRequest:
        return pb.RedeemCouponRequest(
            mall_id=MALL,
            coupon_id=coupon_ids[i],
            store_id=STORE,
            use_request_id=f"pos-{i}",
            order_amount_fen=12_800,
        )

    async def redeem(i: int) -> None:
        reply = await stub.RedeemCoupon(use(i), metadata=metadata, timeout=10)
        if reply.discount_fen != 5000:
            raise RuntimeError(f"coupon {coupon_ids[i]} took off {reply.discount_fen}")

    tills = Tills(stub, metadata, concurrency)

    async def redeem_streamed(i: int) -> None:
        answer = await tills.redeem(use(per_way + i))
        if answer.redeemed.discount_fen != 5000:
            raise RuntimeError(f"coupon {coupon_ids[per_way + i]} answered {answer}")

    check = health_pb2.HealthCheckRequest()

    async def nothing(_: int) -> None:
        await empty.Check(check)

    ways = {"empty": nothing, "redeem": redeem, "redeem_stream": redeem_streamed}
    if only is not None:  # profiling one way (the report then has no ratio)
        ways = {only: ways[only]}
    # Warm-up: the first call pays the credential's scrypt check; later ones hit the cache.
    for one in ways.values():
        await timed(warmup, concurrency, _shifted(one, k))
    per_round = k // rounds
    spent = dict.fromkeys(ways, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(rounds):
        for name, one in ways.items():
            rate, lat = await timed(per_round, concurrency, _shifted(one, r * per_round))
            spent[name] += per_round / rate
            latencies[name].extend(lat)
    await tills.close()
    calls = per_round * rounds
    return {
        "redemptions": calls,
        "concurrency": concurrency,
        "rounds": rounds,
        **{name: latency_summary(calls / spent[name], latencies[name]) for name in ways},
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with (
        servers() as (pg_url, nats_url, _),
        aiohttp.ClientSession() as session,
    ):
        empty = await grpc_empty_unary(args.baseline_n, args.concurrency)
        empty_port = free_port()
        empty_proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
            [
                sys.executable,
                str(ROOT / "bench" / "empty_servers.py"),
                str(free_port()),
                str(empty_port),
            ],
            stdout=subprocess.PIPE,
        )
        assert empty_proc.stdout is not None
        await asyncio.to_thread(empty_proc.stdout.readline)
        db = await create_database(pg_url, "bench_coupons")
        # `python -m coupons migrate`, not an import: this file is itself named coupons.py.
        migrating = spawn("coupons-migrate", ["-m", "coupons", "migrate"], {"DATABASE_URL": db})
        if await asyncio.to_thread(migrating.proc.wait) != 0:
            raise RuntimeError("coupons migrate failed")
        metadata = await publish_directory(nats_url)
        port = free_port()
        server = spawn(
            "coupons-serve",
            ["-m", "coupons", "serve"],
            {"DATABASE_URL": db, "NATS_URL": nats_url, "GRPC_PORT": str(port)},
        )
        try:
            await wait_http(session, f"http://127.0.0.1:{server.metrics_port}/metrics")
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
                grpc.aio.insecure_channel(f"127.0.0.1:{empty_port}") as empty_channel,
            ):
                stub = pb_grpc.CouponsServiceStub(channel)
                await directory_ready(stub, metadata)
                grab = (
                    None
                    if args.only_redemption
                    else await flash_grab(
                        stub,
                        db,
                        args.shoppers,
                        args.coupons,
                        args.repeat,
                        args.batch,
                        args.batches_in_flight,
                    )
                )
                redeem = await redemption(
                    stub,
                    db,
                    metadata,
                    health_pb2_grpc.HealthStub(empty_channel),
                    args.k,
                    args.concurrency,
                    args.rounds,
                    args.only_redemption,
                )
        finally:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=30)
            empty_proc.terminate()
            empty_proc.wait()
    return {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "baselines": {"grpc_empty_unary_latency": empty},
        "flash_grab": grab,
        "redemption": redeem,
    }


def report(result: dict[str, Any]) -> str:
    empty = result["baselines"]["grpc_empty_unary_latency"]
    g, r = result["flash_grab"], result["redemption"]
    c = r["concurrency"]
    if g is None:
        return json.dumps(r, indent=2)
    e, rd, rs = r["empty"], r["redeem"], r["redeem_stream"]
    sold_out = f"{g['sold_out_p99_ms']:.1f} ms" if g["sold_out_p99_ms"] is not None else "—"
    return "\n".join(
        [
            "| measure | value | ratio | p50 / p99 |",
            "|---|---|---|---|",
            f"| empty grpc.aio unary, {c} in flight (baseline, before the grab) | "
            f"{empty['per_s']:,.0f}/s | 1 | {empty['p50_ms']:.1f} / {empty['p99_ms']:.1f} ms |",
            f"| flash grab: {g['claims']:,} claims ({g['shoppers']:,} shoppers + "
            f"{g['claims'] - g['shoppers']:,} second presses) for {g['coupons']:,} coupons, "
            f"ClaimCoupons of {g['batch']} × {g['batches_in_flight']} in flight | "
            f"{g['claims_per_s']:,.0f} claims/s | {g['claims_per_s'] / empty['per_s']:.2f} "
            f"of empty unary | {g['p50_ms']:.1f} / {g['p99_ms']:.1f} ms |",
            f"| flash grab outcome | claimed {g['answered_claimed']:,}, sold out "
            f"{g['answered_sold_out']:,}, limit {g['answered_limit_reached']:,}; oversold "
            f"{g['oversold']}, duplicates {g['duplicates']}; the last coupon went after "
            f"{g['sold_out_after_ms']:,.0f} ms | | sold-out-only batches p99 {sold_out} |",
            f"| empty grpc.aio unary, {c} in flight, rounds alternating with the next row | "
            f"{e['per_s']:,.0f}/s | 1 | {e['p50_ms']:.1f} / {e['p99_ms']:.1f} ms |",
            f"| RedeemCoupon (核销), tenant credential, {c} in flight | {rd['per_s']:,.0f}/s | "
            f"{rd['per_s'] / e['per_s']:.2f} of empty unary | "
            f"{rd['p50_ms']:.1f} / {rd['p99_ms']:.1f} ms |",
            f"| RedeemCoupons (核销 on a till's stream), {c} tills, one at a time each | "
            f"{rs['per_s']:,.0f}/s | {rs['per_s'] / e['per_s']:.2f} of empty unary | "
            f"{rs['p50_ms']:.1f} / {rs['p99_ms']:.1f} ms |",
            "",
            "load average (1, 5, 15 min) at the end: "
            + ", ".join(f"{x:.1f}" for x in result["load_average_at_end"]),
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shoppers", type=int, default=20_000, help="shoppers in the grab")
    parser.add_argument("--coupons", type=int, default=2_000, help="coupons in the stock")
    parser.add_argument("--repeat", type=int, default=2_000, help="second presses")
    parser.add_argument("--batch", type=int, default=200, help="claims per ClaimCoupons call")
    parser.add_argument("--batches-in-flight", type=int, default=4, help="ClaimCoupons at once")
    parser.add_argument("-k", type=int, default=5_000, help="RedeemCoupon calls measured")
    parser.add_argument("-c", "--concurrency", type=int, default=32, help="RPCs in flight")
    parser.add_argument("--baseline-n", type=int, default=5_000, help="empty unary calls")
    parser.add_argument("--rounds", type=int, default=5, help="alternating redeem/empty rounds")
    parser.add_argument(
        "--only-redemption",
        choices=["empty", "redeem", "redeem_stream"],
        help="no grab, and only this way of redeeming (to profile it)",
    )
    args = parser.parse_args()
    outcome = uvloop.run(main(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"coupons-{stamp}.json").write_text(json.dumps(outcome, indent=2))
    print(report(outcome))
