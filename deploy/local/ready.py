"""Is the stack ready? The gateway's /readyz and every backend's gRPC health, or a reason why
it will never be (a service supervisord gave up on, supervisord itself gone)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.local.stack import StackError
from deploy.local.supervise import Supervisord

_POLL_S = 0.1
#: The services come up while we ask: without these, a refused first attempt puts the channel
#: in gRPC's reconnect backoff (1 s, then 1.6 s, ...) and readiness is seen seconds late.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
]
#: A service that dies this often before the stack is ready will not get there by itself.
_MAX_RESTARTS = 3


async def _http_ready(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _grpc_serving(stub: health_pb2_grpc.HealthStub, service: str) -> bool:
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def wait_ready(
    supervisord: Supervisord,
    *,
    readyz_url: str,
    grpc_targets: dict[str, str],
    timeout_s: float,
) -> None:
    """Return once everything answers ready; StackError if it will not."""
    deadline = time.monotonic() + timeout_s
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        stubs = {}
        for name, target in grpc_targets.items():
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            )
            stubs[name] = health_pb2_grpc.HealthStub(channel)
        pending = {"gateway", *grpc_targets}  # asked again until they say ready, not after
        pids: dict[str, set[int]] = {}  # by service: every pid it has had
        while True:
            if supervisord.exited:
                raise StackError(f"supervisord exited with code {supervisord.proc.returncode}")
            for process in await supervisord.processes():
                if process.state == "FATAL":  # supervisord gave up on it
                    raise StackError(f"{process.name} could not start; its output is above")
                seen = pids.setdefault(process.name, set())
                seen.update({process.pid} - {0})
                if len(seen) > _MAX_RESTARTS:
                    raise StackError(
                        f"{process.name} keeps exiting ({len(seen) - 1} restarts so far); "
                        "its output is above"
                    )
            checks = {
                name: _http_ready(session, readyz_url)
                if name == "gateway"
                else _grpc_serving(stubs[name], name)
                for name in pending
            }
            results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
            pending = {name for name, ok in results.items() if not ok}
            if not pending:
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"not ready after {timeout_s:g} s: {', '.join(sorted(pending))} "
                    "(MALL_READY_TIMEOUT_S sets the limit)"
                )
            await asyncio.sleep(_POLL_S)
