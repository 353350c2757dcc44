"""HTTP views for the probes (the mini-program's are in ``shoppers`` and ``live``)."""

from __future__ import annotations

from aiohttp import web

from gateway.entrypoints.keys import PUBLISHER, WEBHOOKS


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the gateway can accept a payment (NATS connected, directory copy loaded)."""
    waiting = []
    if not request.app[PUBLISHER].ready():
        waiting.append("nats")
    if not request.app[WEBHOOKS].directory_ready():
        waiting.append("directory")
    if waiting:
        return web.json_response({"status": "not ready", "waiting_for": waiting}, status=503)
    return web.json_response({"status": "ready"})
