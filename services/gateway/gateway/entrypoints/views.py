"""HTTP views for the probes and metrics (the mini-program's are in ``shoppers`` and ``live``)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from gateway.entrypoints import schemas
from gateway.entrypoints.keys import BACKENDS, PUBLISHER, WEBHOOKS


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return schemas.answer(schemas.Health(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the gateway can accept a payment (NATS connected, directory copy loaded).

    The gRPC services behind the mini-program API are reported too, but do not make the
    gateway unready: a replica taken out of the Service for a points outage would stop
    accepting payments as well (every replica sees the same outage), and the API already
    answers a degraded card or a 503 problem per request.
    """
    waiting = []
    if not request.app[PUBLISHER].ready():
        waiting.append("nats")
    if not request.app[WEBHOOKS].directory_ready():
        waiting.append("directory")
    backends = await request.app[BACKENDS].reachable()
    body = schemas.Readiness(
        status="not ready" if waiting else "ready",
        waiting_for=waiting,
        backends={name: "reachable" if up else "unreachable" for name, up in backends.items()},
    )
    return schemas.answer(body, status=503 if waiting else 200)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this process's metrics (also on ``METRICS_PORT`` if set)."""
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
