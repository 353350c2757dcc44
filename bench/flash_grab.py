"""The flash grab (抢券) through the gateway: many shoppers pressing "claim" at once over HTTP.

Starts embedded PostgreSQL and nats-server (or uses DATABASE_URL / NATS_URL), ``member all``,
``points all`` and ``coupons all`` as separate processes, seeds a mall, creates one stock of
``--coupons`` coupons (one per member) and starts ``--gateways`` ``gateway serve`` processes on
one port (SO_REUSEPORT, as the Deployment's replicas: at least 2) pointed at them. Then, with
one load generator at ``-c`` connections — ``--client autocannon`` (default: Node.js,
bench/load/press.mjs, `make bench-tools`; it costs the shared box about a quarter of what a
Python client does per request) or ``--client aiohttp`` (this process, as earlier sessions
measured):

* baseline: an empty aiohttp handler (``bench/empty_servers.py``), ``--shoppers`` requests, same
  client, same run;
* flash grab: ``--shoppers`` distinct shoppers (distinct session tokens, minted with the
  gateway's signing key as ``POST /v1/session`` would: login is not what is measured; member
  ids are fresh UUIDs, as coupons takes the member from the gateway) each
  ``POST /v1/me/coupons/claims`` once for the stock, in random order. The gateway coalesces
  concurrent claims into ClaimCoupons calls and answers "sold out" from memory once the stock
  is known exhausted. Claims/s over the whole grab, p50/p99 per claim, how they were answered
  (201 / 409 sold_out / other), and the proof from coupons' database: coupons issued
  (oversold = issued − stock, must be 0), shoppers holding two (must be 0);
* ``--again``: then every shopper presses once more with the same request_id (a retry):
  winners must get the same coupon back, losers sold_out.

Claims/s runs from the first press to the last answer (autocannon's own duration also counts
opening its connections); with autocannon the JSON also has the answers per 250 ms.

Results: a table, and bench/results/flash-grab-<time>.json.

    .venv/bin/python bench/flash_grab.py          # --shoppers 20000 --coupons 2000 -c 256
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import grpc
import uvloop
from gateway.adapters.tokens import SessionTokens
from gateway.domain.shoppers import Session
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kit.migrations import migrate
from kit.proto import timestamp
from mall.coupons.v1 import coupons_pb2, coupons_service_pb2, coupons_service_pb2_grpc
from mall_testing.demo import DemoMall, seed
from mall_testing.embedded import free_port
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS

if TYPE_CHECKING:  # mypy sees bench/ as a namespace package from the repository root
    from bench.payments import (
        RESULTS,
        ROOT,
        Replica,
        create_database,
        percentile,
        servers,
        spawn,
        wait_http,
    )
else:  # `python bench/flash_grab.py` puts bench/ itself on sys.path
    from payments import (
        RESULTS,
        ROOT,
        Replica,
        create_database,
        percentile,
        servers,
        spawn,
        wait_http,
    )


def figures(n: int, seconds: float, latencies: list[float]) -> dict[str, Any]:
    return {
        "per_s": round(n / seconds),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
    }


#: bench/load: the Node.js load generator (autocannon), installed by `make bench-tools`.
LOAD = ROOT / "bench" / "load"


@dataclass
class Pressed:
    """One pass of presses, whichever client made it."""

    seconds: float
    p50_ms: float
    p99_ms: float
    #: "201 claimed", "409 sold_out", ...: how many presses were answered so.
    outcomes: Counter[str]
    #: Press index -> the coupon id its 201 carried.
    won: dict[int, str]
    #: When the last 201 came, in seconds from the first press.
    last_201_s: float | None
    #: Answers in each 250 ms from the first press (autocannon only).
    timeline: list[int] | None = None

    def figures(self, n: int) -> dict[str, Any]:
        return {"per_s": round(n / self.seconds), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms}


async def autocannon(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """bench/load/press.mjs on ``spec`` (autocannon in a Node.js process): its JSON answer."""
    if not (LOAD / "node_modules" / "autocannon").is_dir():
        raise RuntimeError("autocannon is missing: run `make bench-tools` (npm ci in bench/load)")
    path = folder / f"spec-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(spec))
    proc = await asyncio.create_subprocess_exec(
        "node", str(LOAD / "press.mjs"), str(path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"press.mjs exited with {proc.returncode}")
    answer: dict[str, Any] = json.loads(out)
    if answer["errors"] or answer["timeouts"]:
        raise RuntimeError(f"the load generator saw errors: {answer}")
    return answer


async def press_with_autocannon(
    url: str, presses: list[tuple[bytes, dict[str, str]]], concurrency: int, folder: Path
) -> Pressed:
    lines = folder / f"presses-{uuid.uuid4().hex}.tsv"
    lines.write_text(
        "".join(f"{headers['Authorization']}\t{body.decode()}\n" for body, headers in presses)
    )
    answer = await autocannon(
        {"url": url, "connections": concurrency, "presses": str(lines)}, folder
    )
    return Pressed(
        seconds=answer["seconds"],
        p50_ms=answer["p50_ms"],
        p99_ms=answer["p99_ms"],
        outcomes=Counter(answer["outcomes"]),
        won={int(i): str(c) for i, c in answer["coupons"].items()},
        last_201_s=answer["last_201_s"],
        timeline=answer["timeline"],
    )


async def press_with_aiohttp(
    session: aiohttp.ClientSession,
    url: str,
    presses: list[tuple[bytes, dict[str, str]]],
    concurrency: int,
) -> Pressed:
    async def press(i: int) -> tuple[int, str]:
        body, headers = presses[i]
        async with session.post(url, data=body, headers=headers) as resp:
            answer = await resp.json(content_type=None)
            key = answer.get("coupon_id") if resp.status == 201 else answer.get("code")
            return resp.status, str(key)

    seconds, latencies, answers, finished = await pressing(len(presses), concurrency, press)
    return Pressed(
        seconds=seconds,
        p50_ms=round(percentile(latencies, 50), 2),
        p99_ms=round(percentile(latencies, 99), 2),
        outcomes=Counter(
            f"{status} {key}" if status != 201 else "201 claimed" for _, (status, key) in answers
        ),
        won={i: key for i, (status, key) in answers if status == 201},
        last_201_s=max(
            (t for (_, (status, _)), t in zip(answers, finished, strict=True) if status == 201),
            default=None,
        ),
    )


async def pressing(
    n: int, concurrency: int, one: Any
) -> tuple[float, list[float], list[tuple[int, Any]], list[float]]:
    """(seconds, latencies in ms, answers, when each answer came in s) of ``one(i)`` for i in
    0..n-1, C in flight."""
    work = iter(range(n))
    latencies: list[float] = []
    answers: list[tuple[int, Any]] = []
    finished: list[float] = []
    begun = time.perf_counter()

    async def worker() -> None:
        for i in work:
            started = time.perf_counter()
            answer = await one(i)
            now = time.perf_counter()
            latencies.append((now - started) * 1000)
            answers.append((i, answer))
            finished.append(now - begun)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - begun, latencies, answers, finished


async def warm(session: aiohttp.ClientSession, url: str, concurrency: int) -> None:
    """Open the client's connections first (not what is measured)."""

    async def one(_: int) -> int:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status

    await pressing(4 * concurrency, concurrency, one)


def listeners(port: int) -> int:
    """Sockets listening on ``port`` (one per process sharing it with SO_REUSEPORT)."""
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    return sum(1 for r in rows if r[1].endswith(f":{port:04X}") and r[3] == "0A")


async def ready_grpc(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=120, wait_for_ready=True
        )


async def create_stock(coupons_port: int, mall_id: str, coupons: int) -> str:
    now = datetime.now(UTC)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coupons_port}") as channel:
        reply = await coupons_service_pb2_grpc.CouponsServiceStub(channel).CreateStock(
            coupons_service_pb2.CreateStockRequest(
                stock=coupons_pb2.Stock(
                    mall_id=mall_id,
                    title="限时抢 满100减50",
                    coupon_type=coupons_pb2.COUPON_TYPE_FIXED_AMOUNT,
                    discount_fen=5000,
                    threshold_fen=10000,
                    max_coupons=coupons,
                    max_per_member=1,
                    claim_starts_at=timestamp(now - timedelta(minutes=1)),
                    claim_ends_at=timestamp(now + timedelta(hours=1)),
                    valid_days=7,
                ),
                request_id=uuid.uuid4().hex,
            ),
            timeout=30,
        )
    return str(reply.stock.stock_id)


async def proof(db_url: str, mall_id: str, stock_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        issued = await conn.fetchval(
            "SELECT count(*) FROM coupons WHERE mall_id = $1 AND stock_id = $2", mall_id, stock_id
        )
        twice = await conn.fetchval(
            """SELECT count(*) FROM (SELECT member_id FROM coupons
                WHERE mall_id = $1 AND stock_id = $2 GROUP BY member_id HAVING count(*) > 1) t""",
            mall_id,
            stock_id,
        )
    finally:
        await conn.close()
    return {"issued": int(issued), "members_holding_two": int(twice)}


async def baseline(
    session: aiohttp.ClientSession, n: int, concurrency: int, client: str, folder: Path
) -> dict[str, float]:
    http_port, grpc_port = free_port(), free_port()
    empty = subprocess.Popen(  # noqa: ASYNC220 - started before anything is measured
        [sys.executable, str(ROOT / "bench" / "empty_servers.py"), str(http_port), str(grpc_port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert empty.stdout is not None
        await asyncio.to_thread(empty.stdout.readline)
        url = f"http://127.0.0.1:{http_port}/empty"
        # (the empty server answers GET with 405: enough to open the connections)
        await warm(session, url, concurrency)
        body = json.dumps({"stock_id": "x", "request_id": "y"}).encode()
        if client == "autocannon":
            spec = {"url": url, "connections": concurrency, "amount": n, "body": body.decode()}
            answer = await autocannon(spec, folder)
            return {
                "per_s": round(n / answer["seconds"]),
                "p50_ms": answer["p50_ms"],
                "p99_ms": answer["p99_ms"],
            }

        async def one(_: int) -> int:
            async with session.post(url, data=body) as resp:
                await resp.read()
                return resp.status

        seconds, latencies, _, _ = await pressing(n, concurrency, one)
        return figures(n, seconds, latencies)
    finally:
        empty.terminate()
        empty.wait()


async def main(
    shoppers: int, coupons: int, concurrency: int, again: bool, gateways: int, client: str
) -> dict[str, Any]:
    procs: list[Replica] = []
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "concurrency": concurrency,
        "shoppers": shoppers,
        "coupons": coupons,
        "gateways": gateways,
        "client": client,
    }
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with (
        servers() as (pg_url, nats_url, _pids),
        aiohttp.ClientSession(connector=connector) as session,
    ):
        dbs = {
            name: await create_database(pg_url, f"bench_grab_{name}")
            for name in ("member", "points", "coupons")
        }
        await migrate(dbs["member"], MEMBER_MIGRATIONS)
        await migrate(dbs["points"], POINTS_MIGRATIONS)
        # (`coupons` here is bench/coupons.py, so coupons migrates in its own process)
        migrating = spawn(
            "coupons-migrate",
            ["-m", "coupons", "migrate"],
            {"DATABASE_URL": dbs["coupons"], "NATS_URL": nats_url},
        )
        if await asyncio.to_thread(migrating.proc.wait) != 0:
            raise RuntimeError("coupons migrate failed")
        ports = {name: free_port() for name in dbs}
        for name in dbs:
            procs.append(
                spawn(
                    f"{name}-all",
                    ["-m", name, "all"],
                    {
                        "NATS_URL": nats_url,
                        "DATABASE_URL": dbs[name],
                        "GRPC_PORT": str(ports[name]),
                    },
                )
            )
        try:
            for port in ports.values():  # a loaded box may take a while
                await ready_grpc(port)
            mall = await seed(f"127.0.0.1:{ports['member']}", DemoMall.unique())
            stock_id = await create_stock(ports["coupons"], mall.mall_id, coupons)
            key = secrets.token_urlsafe(48)
            folder = Path(tempfile.mkdtemp(prefix="bench-grab-"))
            (folder / "miniprograms.json").write_text(json.dumps({mall.appid: "s" * 32}))
            gateway_port = free_port()
            for n in range(gateways):  # replicas share the port (SO_REUSEPORT), as pods do
                procs.append(
                    spawn(
                        f"gateway-{n}",
                        ["-m", "gateway", "serve"],
                        {
                            "NATS_URL": nats_url,
                            "HTTP_PORT": str(gateway_port),
                            "MEMBER_GRPC_TARGET": f"127.0.0.1:{ports['member']}",
                            "POINTS_GRPC_TARGET": f"127.0.0.1:{ports['points']}",
                            "COUPONS_GRPC_TARGET": f"127.0.0.1:{ports['coupons']}",
                            "MINIPROGRAM_SECRETS_FILE": str(folder / "miniprograms.json"),
                            "SESSION_SIGNING_KEY": key,
                            "RATE_LIMIT_PER_IP": "",  # one client address makes all the load
                            "RATE_LIMIT_PER_MEMBER": "",
                        },
                    )
                )
            await wait_http(session, f"http://127.0.0.1:{gateway_port}/readyz")
            for _ in range(100):  # the first one up answered /readyz; wait for the rest
                if listeners(gateway_port) >= gateways:
                    break
                await asyncio.sleep(0.2)

            tokens = SessionTokens(key, access_ttl_s=7200, refresh_ttl_s=86_400)
            people = [
                (
                    str(member_id := uuid.uuid4()),
                    tokens.issue(
                        Session(mall.mall_id, f"o-{uuid.uuid4().hex}", str(member_id))
                    ).access_token,
                    uuid.uuid4().hex,  # the app's request_id for this press
                )
                for _ in range(shoppers)
            ]
            random.shuffle(people)

            result["baseline_empty_aiohttp"] = await baseline(
                session, shoppers, concurrency, client, folder
            )

            await warm(session, f"http://127.0.0.1:{gateway_port}/healthz", concurrency)
            url = f"http://127.0.0.1:{gateway_port}/v1/me/coupons/claims"

            # Each press's body and headers made before the clock starts: the client shares the
            # two cores with the servers, and what it spends is not the gateway's to spend.
            presses = [
                (
                    json.dumps({"stock_id": stock_id, "request_id": request_id}).encode(),
                    {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                )
                for _, token, request_id in people
            ]

            async def press_all() -> Pressed:
                if client == "autocannon":
                    return await press_with_autocannon(url, presses, concurrency, folder)
                return await press_with_aiohttp(session, url, presses, concurrency)

            pressed = await press_all()
            grab = pressed.figures(shoppers)
            grab["seconds"] = round(pressed.seconds, 2)
            grab["last_coupon_at_s"] = round(pressed.last_201_s or 0.0, 2)
            won = {people[i][0]: key for i, key in pressed.won.items()}
            grab["answered"] = dict(pressed.outcomes)
            if pressed.timeline is not None:
                grab["answers_per_250ms"] = pressed.timeline
            grab["vs_empty"] = round(grab["per_s"] / result["baseline_empty_aiohttp"]["per_s"], 2)
            checked = await proof(dbs["coupons"], mall.mall_id, stock_id)
            grab.update(checked)
            grab["claimed_201"] = len(won)
            grab["oversold"] = max(0, checked["issued"] - coupons)
            grab["duplicates"] = checked["members_holding_two"] + (
                len(won) - len(set(won.values()))
            )
            result["flash_grab"] = grab

            if again:  # every shopper retries with the same request_id
                pressed = await press_all()
                retry = pressed.figures(shoppers)
                retry["winners_same_coupon"] = sum(
                    1 for i, key in pressed.won.items() if won.get(people[i][0]) == key
                )
                retry["answered"] = dict(pressed.outcomes)
                result["retry"] = retry
        finally:
            for p in procs:
                if p.proc.poll() is None:
                    p.proc.terminate()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(10)
    return result


def report(r: dict[str, Any]) -> str:
    base, grab = r["baseline_empty_aiohttp"], r["flash_grab"]
    lines = [
        f"{r['cores']} cores, {r['concurrency']} in flight, {r['shoppers']:,} shoppers for "
        f"{r['coupons']:,} coupons, {r.get('gateways', 1)} gateway process(es), "
        f"client {r.get('client', 'aiohttp')}",
        "",
        "| measure | per s | vs empty | p50 / p99 ms |",
        "|---|---|---|---|",
        f"| empty aiohttp handler (baseline) | {base['per_s']:,} | 1 | "
        f"{base['p50_ms']} / {base['p99_ms']} |",
        f"| flash grab claims through the gateway | {grab['per_s']:,} | {grab['vs_empty']} | "
        f"{grab['p50_ms']} / {grab['p99_ms']} |",
    ]
    if "retry" in r:
        t = r["retry"]
        lines.append(
            f"| every shopper retries its request_id | {t['per_s']:,} | | "
            f"{t['p50_ms']} / {t['p99_ms']} |"
        )
    lines += [
        "",
        f"answered: {grab['answered']}",
        f"issued (coupons' database): {grab['issued']:,}; oversold: {grab['oversold']}; "
        f"duplicates: {grab['duplicates']}",
        f"the grab took {grab['seconds']} s; the last coupon went at {grab['last_coupon_at_s']} s",
    ]
    if "retry" in r:
        lines.append(
            f"retry: {r['retry']['answered']}; winners given their same coupon: "
            f"{r['retry']['winners_same_coupon']:,}"
        )
    return "\n".join(lines)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shoppers", type=int, default=20_000, help="distinct shoppers")
    parser.add_argument("--coupons", type=int, default=2_000, help="coupons in the stock")
    parser.add_argument("-c", type=int, default=256, help="requests in flight")
    parser.add_argument("--again", action="store_true", help="then every shopper retries")
    parser.add_argument(
        "--gateways", type=int, default=1, help="gateway processes sharing the port"
    )
    parser.add_argument(
        "--client",
        choices=["autocannon", "aiohttp"],
        default="autocannon",
        help="the load generator: autocannon (Node.js, bench/load) or this process's aiohttp",
    )
    args = parser.parse_args()
    result = uvloop.run(
        main(args.shoppers, args.coupons, args.c, args.again, args.gateways, args.client)
    )
    print(report(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"flash-grab-{stamp}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli()
