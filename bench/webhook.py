"""`python bench/webhook.py`: signed WeChat Pay notifications through one gateway process.

This process serves the gateway's aiohttp app in-process, wired as ``python -m gateway serve``
wires it (a real PaymentsPublisher, the GATEWAY_NOTIFICATIONS replay bucket, a one-mall
directory copy, a merchant with keys made for this run), and beside it an empty aiohttp POST
handler: the same-run baseline. nats-server is embedded (or ``NATS_URL``). A separate client
process (this script in ``client`` mode) posts N requests with C in flight to each. The client
signs and encrypts every notification *before* its clock starts, so what is measured is what
the gateway does for the platform: verify the RSA signature, decrypt AES-256-GCM, validate,
check the replay bucket, publish and await the JetStream ack, answer 204.

Printed as a table; the run fails unless every notification was accepted and stored once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import nats
import uvloop
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from eventbus.streams import ensure_streams
from gateway.adapters.bus import PaymentsPublisher
from gateway.adapters.directory import Directory
from gateway.adapters.merchants import Merchant
from gateway.adapters.replays import ReplayGuard
from gateway.adapters.services import Backends
from gateway.entrypoints.app import HttpServer, create_app
from gateway.entrypoints.keys import Webhooks
from kit.logs import configure_logging
from mall.member.v1 import directory_pb2, member_service_pb2_grpc
from mall.points.v1 import points_service_pb2_grpc
from mall_testing.embedded import EmbeddedNats, free_port
from wechatpay import notifications as wn
from wechatpay.signing import PublicKey, load_private_key

MCHID = "1900000109"
SERIAL = "PUB_KEY_ID_0000000000000000000000000001"
APPID = "wxbench0000000001"
SHOP = "SHOP-001"
MALL = "bench-mall"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- the client process --------------------------------------------------------------------


def sealed_payments(spec: dict[str, Any], count: int) -> list[tuple[dict[str, str], bytes]]:
    key = load_private_key(Path(spec["key_file"]).read_bytes())
    now = int(time.time())
    out = []
    for _ in range(count):
        resource = {
            "mchid": MCHID,
            "merchant_name": "Coffee Corner",
            "shop_name": "Coffee Corner",
            "shop_number": SHOP,
            "appid": APPID,
            "openid": f"o-{uuid.uuid4().hex[:16]}",
            "time_end": "2026-11-26T10:00:00+08:00",
            "amount": 8800,
            "transaction_id": f"4200{uuid.uuid4().int % 10**24:024d}",
        }
        sealed = wn.seal_notification(
            notification_id=str(uuid.uuid4()),
            event_type="MALL_TRANSACTION.SUCCESS",
            resource=resource,
            apiv3_key=spec["apiv3_key"],
            private_key=key,
            serial=SERIAL,
            timestamp=now,
            associated_data="transaction",
        )
        out.append(({"Content-Type": "application/json", **sealed.headers}, sealed.body))
    return out


async def drive(
    url: str, requests: list[tuple[dict[str, str], bytes]], concurrency: int
) -> dict[str, Any]:
    """Post every request once with ``concurrency`` in flight; rate, statuses, latencies."""
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    pending = iter(requests)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for headers, body in pending:
                started = time.perf_counter()
                async with session.post(url, data=io.BytesIO(body), headers=headers) as resp:
                    await resp.read()
                latencies.append(time.perf_counter() - started)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "per_s": len(requests) / elapsed,
        "statuses": statuses,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


async def client(spec: dict[str, Any], requests: list[tuple[dict[str, str], bytes]]) -> None:
    """Per concurrency: warm up, then the empty handler (same bodies), then the webhook."""
    n, warmup = spec["n"], spec["warmup"]
    await asyncio.to_thread(sys.stdin.readline)  # "go": the servers are up
    rows = []
    for i, concurrency in enumerate(spec["concurrency"]):
        fresh = requests[i * (warmup + n) : (i + 1) * (warmup + n)]
        row: dict[str, Any] = {"concurrency": concurrency}
        for phase in ("empty", "webhook"):
            await drive(spec[phase], fresh[:warmup], concurrency)
            row[phase] = await drive(spec[phase], fresh[warmup:], concurrency)
        rows.append(row)
    sys.stdout.write(json.dumps(rows) + "\n")


def client_main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    # Every notification is signed and encrypted here, before any clock starts.
    requests = sealed_payments(spec, len(spec["concurrency"]) * (spec["warmup"] + spec["n"]))
    uvloop.run(client(spec, requests))


# -- the gateway process -------------------------------------------------------------------


async def empty(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int) -> AsyncIterator[None]:
    server = HttpServer(app, host="127.0.0.1", port=port, grace_s=1)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        for _ in range(500):
            if server.port:
                break
            await asyncio.sleep(0.01)
        yield
    finally:
        stop.set()
        await task


async def measure(spec_file: Path, spec: dict[str, Any], platform_key: PublicKey) -> list[Any]:
    # The client starts first (before any gRPC channel exists in this process) and signs
    # while the gateway comes up; it begins when told "go".
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "client",
        str(spec_file),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    nc = await nats.connect(spec["nats_url"])
    js = nc.jetstream()
    await ensure_streams(js, "PAYMENTS")
    before = (await js.stream_info("PAYMENTS")).state.messages
    webhooks = Webhooks(
        merchants={MCHID: Merchant(MCHID, spec["apiv3_key"], {SERIAL: platform_key})},
        shops=Directory.from_entries(
            [directory_pb2.Mall(mall_id=MALL, appid=APPID)],
            [directory_pb2.Store(mall_id=MALL, store_id="s1", tenant_id="t1", shop_number=SHOP)],
        ),
        guard=await ReplayGuard.open(js),
    )
    baseline = web.Application()
    baseline.router.add_post("/empty", empty)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as nowhere,
        serving(
            create_app(
                PaymentsPublisher(nc, timeout_s=5),
                Backends(
                    member=member_service_pb2_grpc.MemberServiceStub(nowhere),
                    points=points_service_pb2_grpc.PointsServiceStub(nowhere),
                ),
                webhooks,
            ),
            spec["gateway_port"],
        ),
        serving(baseline, spec["baseline_port"]),
    ):
        out, _ = await proc.communicate(b"go\n")
    if proc.returncode != 0:
        raise RuntimeError(f"the client failed ({proc.returncode})")
    rows: list[dict[str, Any]] = json.loads(out)
    stored = (await js.stream_info("PAYMENTS")).state.messages - before
    await nc.close()
    sent = len(rows) * (spec["warmup"] + spec["n"])
    if stored != sent or any(r["webhook"]["statuses"] != {"204": spec["n"]} for r in rows):
        raise RuntimeError(f"not every notification was stored once: {stored} of {sent}, {rows}")
    return rows


def run(nats_url: str, n: int, warmup: int, concurrency: list[int]) -> list[Any]:
    platform_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    gateway_port, baseline_port = free_port(), free_port()
    spec: dict[str, Any] = {
        "nats_url": nats_url,
        "n": n,
        "warmup": warmup,
        "concurrency": concurrency,
        "apiv3_key": secrets.token_hex(16),
        "gateway_port": gateway_port,
        "baseline_port": baseline_port,
        "webhook": f"http://127.0.0.1:{gateway_port}/wechatpay/notifications/{MCHID}",
        "empty": f"http://127.0.0.1:{baseline_port}/empty",
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec["key_file"] = str(Path(tmp) / "platform_key.pem")
        Path(spec["key_file"]).write_bytes(
            platform_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        return uvloop.run(measure(spec_file, spec, platform_key.public_key()))


def report(rows: list[dict[str, Any]], n: int) -> str:
    lines = [
        f"{n} requests per row, {os.cpu_count()} cores, client in its own process",
        "",
        "| in flight | measure | req/s | ratio | p50 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        e, w = row["empty"], row["webhook"]
        lines += [
            f"| {row['concurrency']} | empty aiohttp POST, same body (baseline) | "
            f"{e['per_s']:,.0f} | 1 | {e['p50_ms']:.1f} / {e['p99_ms']:.1f} |",
            f"| {row['concurrency']} | signed notification: verify + decrypt + replay check + "
            f"publish (ack) → 204 | {w['per_s']:,.0f} | {w['per_s'] / e['per_s']:.2f} | "
            f"{w['p50_ms']:.1f} / {w['p99_ms']:.1f} |",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="notifications per measurement")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("-c", "--concurrency", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args()
    configure_logging("gateway", level="warning", fmt="json")
    with contextlib.ExitStack() as stack:
        nats_url = (
            os.environ.get("NATS_URL")
            or stack.enter_context(EmbeddedNats(stop_with_parent=False)).url
        )
        rows = run(nats_url, args.n, args.warmup, args.concurrency)
    print(report(rows, args.n))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "client":
        client_main(sys.argv[2])
    else:
        main()
