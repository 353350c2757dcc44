"""Liveness from the event loop: /livez and /metrics served by aiohttp in the loop itself.

Long-running loops (consumers, the outbox relay, polling workers, periodic jobs) record progress
with ``HEARTBEATS.beat(name)`` on each turn, declaring any wait they are about to make. /livez
fails when one of them has not beaten for ``max_age_s`` beyond that wait (stuck on one await,
e.g. a hung statement) and, being served by the same loop, times out when the loop itself hangs:
either way the kubelet restarts the container. A thread could not tell: it answers regardless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest


class Heartbeats:
    """When each named component last made progress (monotonic clock, injectable)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._pause: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def beat(self, name: str, *, pausing_s: float = 0.0) -> None:
        """Progress now; ``pausing_s``: the component is about to wait that long on purpose
        (a polling worker's idle wait, a backoff), which does not count against it."""
        self._last[name] = self._clock()
        self._pause[name] = pausing_s
        self._count[name] = self._count.get(name, 0) + 1

    def forget(self, name: str) -> None:
        """A component that stopped on purpose is no longer expected to beat."""
        self._last.pop(name, None)
        self._pause.pop(name, None)
        self._count.pop(name, None)

    def count(self, name: str) -> int:
        return self._count.get(name, 0)

    def last(self, name: str) -> float | None:
        return self._last.get(name)

    def stale(self, max_age_s: float) -> list[str]:
        now = self._clock()
        return sorted(
            name
            for name, at in self._last.items()
            if now - at > max_age_s + self._pause.get(name, 0.0)
        )


#: The process-wide instance components use unless given another (as prometheus' REGISTRY).
HEARTBEATS = Heartbeats()


def probe_app(
    max_age_s: float,
    heartbeats: Heartbeats = HEARTBEATS,
    registry: CollectorRegistry = REGISTRY,
) -> web.Application:
    async def livez(request: web.Request) -> web.Response:
        stale = heartbeats.stale(max_age_s)
        if stale:
            return web.json_response({"status": "stale", "stale": stale}, status=503)
        return web.json_response({"status": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/metrics", metrics)
    return app


class ProbeServer:
    """Component: /livez and /metrics on ``port`` until stopped (port 0: any free one,
    readable in ``bound_port`` once listening)."""

    def __init__(
        self,
        port: int,
        *,
        max_age_s: float,
        host: str = "0.0.0.0",  # noqa: S104 - probed and scraped in-cluster
        heartbeats: Heartbeats = HEARTBEATS,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._port = port
        self._host = host
        self._app = probe_app(max_age_s, heartbeats, registry)
        self.bound_port: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        # No access log: the kubelet and Prometheus call every few seconds.
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
            self.bound_port = int(runner.addresses[0][1])  # the real one when asked for 0
            await stop.wait()
        finally:
            self.bound_port = None
            await runner.cleanup()
