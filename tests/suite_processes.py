"""The suite as real processes: each role of each service is its own operating-system process
(``python -m <service> <role>``), as in its own pod, watched, scraped, killed and restarted by
the system tests (tests/test_scale_out.py, tests/test_chaos.py) and their helpers here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
from mall_testing.demo import DemoMall
from mall_testing.embedded import free_port
from mall_testing.plugin import Nats
from prometheus_client.parser import text_string_to_metric_families
from wechatpay_simulator.cli import parser, settings_from
from wechatpay_simulator.config import Settings as SimulatorSettings
from wechatpay_simulator.keyfolder import KeyFolder

#: Bounded waits (each poll is 0.05-0.1 s): generous for a loaded 2-core machine.
POLLS = 1200
#: The platform's retry gaps (15 s, 15 s, 30 s, 3 min, ...) times this, for the simulator.
RETRY_SCALE = "0.02"
#: The durable consumers of the payment path, by stream.
DURABLES = (
    ("PAYMENTS", "member-payment-captured"),
    ("PAYMENTS", "member-payment-refunded"),
    ("MEMBER", "points-payment-attributed"),
    ("MEMBER", "points-refund-attributed"),
)


@dataclass
class Replica:
    name: str
    process: asyncio.subprocess.Process
    metrics_port: int
    log_path: Path
    log_file: IO[bytes]
    service: str = ""
    role: str = ""
    env: dict[str, str] = field(default_factory=dict)
    #: Times this replica was killed and started again (tests/test_chaos.py).
    restarts: int = 0

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _log_file(path: Path, *, append: bool = False) -> IO[bytes]:
    return path.open("ab" if append else "wb")


class Fleet:
    """The role processes of one test: started, watched, scraped and stopped together."""

    def __init__(self, log_dir: Path, nats_url: str) -> None:
        self.log_dir = log_dir
        self.nats_url = nats_url
        self.replicas: list[Replica] = []

    async def start(self, name: str, service: str, role: str, **env: str) -> Replica:
        replica = await self._spawn(name, service, role, env, free_port(), append=False)
        self.replicas.append(replica)
        return replica

    async def kill(self, replica: Replica) -> None:
        """SIGKILL: no drain, no goodbye, whatever was in flight stays where it was."""
        if replica.process.returncode is None:
            replica.process.kill()
        await replica.process.wait()
        replica.log_file.close()

    async def restart(self, replica: Replica) -> Replica:
        """Start a killed replica again: same name, role, settings and metrics port; its log
        goes on in the same file."""
        again = await self._spawn(
            replica.name,
            replica.service,
            replica.role,
            replica.env,
            replica.metrics_port,
            append=True,
        )
        again.restarts = replica.restarts + 1
        self.replicas[self.replicas.index(replica)] = again
        return again

    async def _spawn(
        self,
        name: str,
        service: str,
        role: str,
        env: dict[str, str],
        metrics_port: int,
        *,
        append: bool,
    ) -> Replica:
        log_path = self.log_dir / f"{name}.log"
        log_file = _log_file(log_path, append=append)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            service,
            role,
            env={
                **os.environ,
                "NATS_URL": self.nats_url,
                "METRICS_PORT": str(metrics_port),
                "LOG_LEVEL": "warning",
                "LOG_FORMAT": "json",
                # Small batches: a thousand payments are many fetches, so both replicas of a
                # consumer get their turn (production keeps the default of 200).
                "CONSUMER_BATCH_SIZE": "50",
                "DB_POOL_MIN": "1",
                "DB_POOL_MAX": "5",
                **env,
            },
            stdout=log_file,
            stderr=log_file,
        )
        return Replica(name, process, metrics_port, log_path, log_file, service, role, dict(env))

    def named(self, prefix: str) -> list[Replica]:
        return [r for r in self.replicas if r.name.startswith(prefix)]

    def check_alive(self) -> None:
        for r in self.replicas:
            if r.process.returncode is not None:
                raise AssertionError(
                    f"{r.name} exited with {r.process.returncode}:\n{r.log_tail()}"
                )

    async def metrics(self, http: aiohttp.ClientSession, replica: Replica) -> str:
        async with http.get(f"http://127.0.0.1:{replica.metrics_port}/metrics") as resp:
            resp.raise_for_status()
            return await resp.text()

    async def wait_serving_metrics(
        self, http: aiohttp.ClientSession, only: list[Replica] | None = None
    ) -> None:
        """Each process serves /metrics once bootstrapped (pool, NATS, streams, consumers),
        right before it runs its roles."""
        waiting = list(self.replicas if only is None else only)
        for _ in range(POLLS):
            self.check_alive()
            still = []
            for r in waiting:
                try:
                    await self.metrics(http, r)
                except aiohttp.ClientError:
                    still.append(r)
            waiting = still
            if not waiting:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"never served /metrics: {[r.name for r in waiting]}")

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM everything at once (a rolling update's worst case), wait, report codes."""
        for r in self.replicas:
            if r.process.returncode is None:
                r.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for r in self.replicas:
            try:
                codes[r.name] = await asyncio.wait_for(r.process.wait(), timeout=60)
            except TimeoutError:
                codes[r.name] = None
            r.log_file.close()
        return codes

    async def kill_leftovers(self) -> None:
        for r in self.replicas:
            if r.process.returncode is None:
                r.process.kill()
                await r.process.wait()
            r.log_file.close()


@contextlib.asynccontextmanager
async def fleet(log_dir: Path, nats_url: str) -> AsyncIterator[Fleet]:
    f = Fleet(log_dir, nats_url)
    try:
        yield f
    finally:
        await f.kill_leftovers()


def sample_values(text: str, sample: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``sample`` whose labels include ``labels``."""
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def total(text: str, sample: str, **labels: str) -> int:
    return int(sum(value for _, value in sample_values(text, sample, **labels)))


def handled(text: str, consumer: str) -> int:
    return total(text, "mall_consumer_messages_total", consumer=consumer, outcome="handled")


async def wait_until(
    what: str, probe: Callable[[], Awaitable[object]], done: Callable[[Any], bool]
) -> Any:
    value: object = None
    for _ in range(POLLS):
        value = await probe()
        if done(value):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: stuck at {value!r}")


async def execute(dsn: str, query: str, *args: object) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


async def stream_subjects(jetstream: Nats, stream: str) -> dict[str, int]:
    info = await jetstream.js.stream_info(stream, subjects_filter=">")
    return dict(info.state.subjects or {})


async def consumer_settled(jetstream: Nats, stream: str, durable: str) -> bool:
    info = await jetstream.js.consumer_info(stream, durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


# -- the WeChat Pay simulator as the platform of a process suite --------------------------


def simulator_settings(key_dir: Path, mall: DemoMall, notify_url: str) -> SimulatorSettings:
    """The simulator's settings with its key folder written, as ``make run`` does it."""
    args = parser().parse_args(
        [
            "--write-keys",
            str(key_dir),
            "--mchid",
            mall.mchid,
            "--notify-url",
            notify_url,
            "--retry-scale",
            RETRY_SCALE,
        ]
    )
    settings = settings_from(args)
    KeyFolder(key_dir).write(settings)
    return settings


def points_wechatpay_env(key_dir: Path, sim_url: str) -> dict[str, str]:
    [merchant] = json.loads((key_dir / "merchant_credentials.json").read_text())
    return {
        "WECHATPAY_API_BASE": sim_url,
        "WECHATPAY_MCHID": merchant["mchid"],
        "WECHATPAY_MERCHANT_SERIAL": merchant["serial_no"],
        "WECHATPAY_MERCHANT_PRIVATE_KEY_FILE": merchant["private_key"],
        "WECHATPAY_PLATFORM_PUBLIC_KEYS": json.dumps(
            {merchant["platform_serial"]: merchant["platform_public_key"]}
        ),
        "WECHATPAY_BILL_URL": f"{sim_url}/control/bill",
        # A killed worker's claimed reports wait for its lease: short here.
        "WECHATPAY_TIMEOUT_S": "2",
        "WECHATPAY_SYNC_LEASE_S": "5",
        "WECHATPAY_SYNC_POLL_INTERVAL_S": "0.2",
        "WECHATPAY_SYNC_RETRY_BASE_S": "0.2",
        "WECHATPAY_SYNC_RETRY_MAX_S": "2",
    }
