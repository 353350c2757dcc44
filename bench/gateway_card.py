"""The member card through the real gateway, and idle SSE streams' memory.

Starts embedded PostgreSQL and nats-server (or uses DATABASE_URL / NATS_URL), ``member all``
and ``points all`` as separate processes, seeds a mall and joins M members through member's
gRPC API, then measures, with one aiohttp client process at C requests in flight:

* baseline: an empty aiohttp handler (``bench/empty_servers.py``), same client, same run;
* plain fan-out: ``GET /v1/me/card`` on a gateway whose card cache is off (``CARD_TTL_S=0``,
  ``CARD_STALE_S=0``):
  every read calls member and points (the card's two connected sections) concurrently;
* card: ``GET /v1/me/card`` on a gateway as deployed (cache on, default TTL), reads spread
  uniformly over the M members after one warm-up read each; reads/s, p50/p99, and how the
  gateway answered them (its ``mall_gateway_card_reads_total``: memory / joined / fanout);
* SSE: the resident memory of that gateway process before and after K idle
  ``/v1/me/events`` streams (K distinct members), per stream.

Tokens are minted with the gateway's signing key (as ``POST /v1/session`` would issue them):
login is not what is measured. Results: a table, and bench/results/gateway-card-<time>.json.

    .venv/bin/python bench/gateway_card.py            # -n 30000 -c 32 -m 2000 -k 10000
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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
import uvloop
from gateway.adapters.tokens import SessionTokens
from gateway.domain.shoppers import Session
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kit.migrations import migrate
from mall.member.v1 import member_pb2, member_service_pb2, member_service_pb2_grpc
from mall_testing.demo import DemoMall, seed
from mall_testing.embedded import free_port
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from prometheus_client.parser import text_string_to_metric_families

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
else:  # `python bench/gateway_card.py` puts bench/ itself on sys.path
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


async def timed(
    n: int, concurrency: int, one: Any, *, warmup: int = 300
) -> tuple[float, list[float]]:
    """(requests/s, latencies in ms) of ``n`` calls of ``one(i)``, ``concurrency`` in flight."""
    counter = iter(range(warmup))

    async def warm() -> None:
        for i in counter:
            await one(i)

    await asyncio.gather(*(warm() for _ in range(concurrency)))
    latencies: list[float] = []
    work = iter(range(n))

    async def worker() -> None:
        for i in work:
            started = time.perf_counter()
            await one(i)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started), latencies


def figures(rate: float, latencies: list[float]) -> dict[str, float]:
    return {
        "per_s": round(rate),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def card_reads(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    reads: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mall_gateway_card_reads_total":
                reads[sample.labels["outcome"]] = sample.value
    return reads


async def join_members(member_port: int, mall: DemoMall, m: int) -> list[tuple[str, str]]:
    """M members of the mall, joined through member's API: [(openid, member_id)]."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{member_port}") as channel:
        stub = member_service_pb2_grpc.MemberServiceStub(channel)
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> tuple[str, str]:
            openid = f"o-bench-{uuid.uuid4().hex}"
            async with sem:
                reply = await stub.JoinMember(
                    member_service_pb2.JoinMemberRequest(
                        mall_id=mall.mall_id,
                        identity=member_pb2.Identity(
                            identity_type=member_pb2.IDENTITY_TYPE_OPENID, value=openid
                        ),
                        channel=member_pb2.JOIN_CHANNEL_MINI_PROGRAM,
                        phone=f"+86135{i:08d}",
                    ),
                    timeout=30,
                )
            return openid, reply.member.member_id

        return list(await asyncio.gather(*(one(i) for i in range(m))))


def start_gateway(env: dict[str, str], port: int) -> Replica:
    return spawn(f"gateway-{port}", ["-m", "gateway", "serve"], {**env, "HTTP_PORT": str(port)})


async def sse_memory(port: int, pid: int, tokens: list[str]) -> dict[str, float]:
    """RSS of the gateway process before and after ``len(tokens)`` idle SSE streams."""
    before = rss_mb(pid)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        streams: list[aiohttp.ClientResponse] = []
        sem = asyncio.Semaphore(200)

        async def open_one(token: str) -> None:
            async with sem:
                resp = await http.get(
                    f"http://127.0.0.1:{port}/v1/me/events",
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert resp.status == 200, resp.status
                while not (await resp.content.readline()).startswith(b"event: ready"):
                    pass
                streams.append(resp)

        await asyncio.gather(*(open_one(t) for t in tokens))
        await asyncio.sleep(2)  # idle: heartbeats only
        after = rss_mb(pid)
        open_streams = len(streams)
        for resp in streams:
            resp.close()
    return {
        "streams": open_streams,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "kb_per_stream": round((after - before) * 1024 / max(open_streams, 1), 1),
    }


async def main(n: int, concurrency: int, m: int, k: int) -> dict[str, Any]:
    procs: list[Replica] = []
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "concurrency": concurrency,
        "members": m,
        "reads": n,
    }
    async with (
        servers() as (pg_url, nats_url, _pids),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session,
    ):
        member_db = await create_database(pg_url, "bench_card_member")
        points_db = await create_database(pg_url, "bench_card_points")
        await migrate(member_db, MEMBER_MIGRATIONS)
        await migrate(points_db, POINTS_MIGRATIONS)
        member_port, points_port = free_port(), free_port()
        common = {"NATS_URL": nats_url}
        procs.append(
            spawn(
                "member-all",
                ["-m", "member", "all"],
                {**common, "DATABASE_URL": member_db, "GRPC_PORT": str(member_port)},
            )
        )
        procs.append(
            spawn(
                "points-all",
                ["-m", "points", "all"],
                {**common, "DATABASE_URL": points_db, "GRPC_PORT": str(points_port)},
            )
        )
        try:
            for port in (member_port, points_port):  # a loaded box may take a while
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=120, wait_for_ready=True
                    )
            mall = await seed(f"127.0.0.1:{member_port}", DemoMall.unique())
            members = await join_members(member_port, mall, m)
            key = secrets.token_urlsafe(48)
            folder = Path(tempfile.mkdtemp(prefix="bench-card-"))
            (folder / "miniprograms.json").write_text(json.dumps({mall.appid: "s" * 32}))
            gateway_env = {
                **common,
                "MEMBER_GRPC_TARGET": f"127.0.0.1:{member_port}",
                "POINTS_GRPC_TARGET": f"127.0.0.1:{points_port}",
                "MINIPROGRAM_SECRETS_FILE": str(folder / "miniprograms.json"),
                "SESSION_SIGNING_KEY": key,
                "RATE_LIMIT_PER_IP": "",  # one client address makes all the load
                "RATE_LIMIT_PER_MEMBER": "",
            }
            tokens = SessionTokens(key, access_ttl_s=7200, refresh_ttl_s=86_400)
            member_tokens = [
                tokens.issue(Session(mall.mall_id, openid, member_id)).access_token
                for openid, member_id in members
            ]

            # Baseline: an empty aiohttp handler in its own process.
            http_port, grpc_port = free_port(), free_port()
            empty = subprocess.Popen(  # noqa: ASYNC220 - started before anything is measured
                [
                    sys.executable,
                    str(ROOT / "bench" / "empty_servers.py"),
                    str(http_port),
                    str(grpc_port),
                ],
                stdout=subprocess.PIPE,
            )
            try:
                assert empty.stdout is not None
                await asyncio.to_thread(empty.stdout.readline)

                async def empty_one(_: int) -> None:
                    async with session.post(f"http://127.0.0.1:{http_port}/empty") as resp:
                        await resp.read()

                result["baseline_empty_aiohttp"] = figures(*await timed(n, concurrency, empty_one))
            finally:
                empty.terminate()
                empty.wait()

            async def reads(port: int) -> dict[str, float]:
                url = f"http://127.0.0.1:{port}/v1/me/card"
                picks = [random.randrange(m) for _ in range(n + 300)]

                async def one(i: int) -> None:
                    headers = {"Authorization": f"Bearer {member_tokens[picks[i]]}"}
                    async with session.get(url, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"card answered {resp.status}")

                return figures(*await timed(n, concurrency, one))

            # Plain fan-out: the card with its cache off.
            port = free_port()
            plain = start_gateway({**gateway_env, "CARD_TTL_S": "0", "CARD_STALE_S": "0"}, port)
            procs.append(plain)
            await wait_http(session, f"http://127.0.0.1:{port}/readyz")
            result["card_plain_fanout"] = await reads(port)
            plain.proc.terminate()
            plain.proc.wait()

            # The card as deployed: cached, invalidated by change events, TTL safety net.
            port = free_port()
            gateway = start_gateway(gateway_env, port)
            procs.append(gateway)
            await wait_http(session, f"http://127.0.0.1:{port}/readyz")
            warm = iter(range(m))

            async def warm_up() -> None:  # one read per member, C at a time
                for i in warm:
                    headers = {"Authorization": f"Bearer {member_tokens[i]}"}
                    async with session.get(
                        f"http://127.0.0.1:{port}/v1/me/card", headers=headers
                    ) as resp:
                        await resp.read()

            await asyncio.gather(*(warm_up() for _ in range(concurrency)))
            before = await card_reads(session, port)
            result["card"] = await reads(port)
            after = await card_reads(session, port)
            result["card"]["answered"] = {
                k: int(after.get(k, 0) - before.get(k, 0))
                for k in ("memory", "stale", "joined", "fanout")
            }
            result["card"]["vs_empty"] = round(
                result["card"]["per_s"] / result["baseline_empty_aiohttp"]["per_s"], 2
            )
            result["card"]["vs_plain_fanout"] = round(
                result["card"]["per_s"] / result["card_plain_fanout"]["per_s"], 2
            )

            # Idle SSE streams: K distinct members (ids need not exist: no backend is called).
            sse_tokens = [
                tokens.issue(
                    Session(mall.mall_id, f"o-{uuid.uuid4().hex}", str(uuid.uuid4()))
                ).access_token
                for _ in range(k)
            ]
            result["sse_idle"] = await sse_memory(port, gateway.proc.pid, sse_tokens)
        finally:
            for p in procs:
                if p.proc.poll() is None:
                    p.proc.terminate()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(10)
    return result


def report(r: dict[str, Any]) -> str:
    base = r["baseline_empty_aiohttp"]
    rows = [
        ("empty aiohttp handler (baseline)", base, "1"),
        ("card, cache off (plain fan-out: member + points)", r["card_plain_fanout"], ""),
        ("card, as deployed (cache + single flight)", r["card"], str(r["card"]["vs_empty"])),
    ]
    lines = [
        f"{r['cores']} cores, {r['concurrency']} in flight, {r['reads']} reads over "
        f"{r['members']} members",
        "",
        "| measure | reads/s | vs empty | p50 / p99 ms |",
        "|---|---|---|---|",
    ]
    for name, f, ratio in rows:
        lines.append(f"| {name} | {f['per_s']:,} | {ratio} | {f['p50_ms']} / {f['p99_ms']} |")
    lines.append("")
    lines.append(f"card answered: {r['card']['answered']} ({r['card']['vs_plain_fanout']}x plain)")
    s = r["sse_idle"]
    lines.append(
        f"idle SSE: {s['streams']:,} streams, gateway RSS {s['rss_before_mb']} -> "
        f"{s['rss_after_mb']} MB ({s['kb_per_stream']} KB per stream)"
    )
    return "\n".join(lines)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=30_000, help="card reads per phase")
    parser.add_argument("-c", type=int, default=32, help="requests in flight")
    parser.add_argument("-m", type=int, default=2_000, help="members")
    parser.add_argument("-k", type=int, default=10_000, help="idle SSE streams")
    args = parser.parse_args()
    result = uvloop.run(main(args.n, args.c, args.m, args.k))
    print(report(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"gateway-card-{stamp}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli()
