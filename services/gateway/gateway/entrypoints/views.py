"""HTTP views for the mini-program and probes: translate between JSON and the services."""

from __future__ import annotations

from aiohttp import web
from kit.errors import InvalidInput

from gateway.entrypoints.keys import BACKENDS, PUBLISHER, WEBHOOKS


async def member_points(request: web.Request) -> web.Response:
    """The shopper's balance and latest ledger entries."""
    mall_id = request.match_info["mall_id"]
    openid = request.match_info["openid"]
    try:
        page_size = int(request.query.get("page_size", "20"))
    except ValueError:
        raise InvalidInput("invalid_page_size", "page_size must be a number") from None
    backends = request.app[BACKENDS]
    member_id = await backends.member_id_by_openid(mall_id, openid)
    summary = await backends.points_summary(
        mall_id, member_id, page_size=page_size, page_token=request.query.get("page_token", "")
    )
    return web.json_response(summary)


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
