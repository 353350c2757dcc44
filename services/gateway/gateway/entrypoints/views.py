"""HTTP views: translate between JSON and the service layer, nothing more."""

from __future__ import annotations

import json

from aiohttp import web
from kit.errors import InvalidInput

from gateway.adapters import wechatpay
from gateway.entrypoints.keys import BACKENDS, PUBLISHER

MAX_NOTIFICATION_BYTES = 64 * 1024


async def wechatpay_notification(request: web.Request) -> web.Response:
    """WeChat Pay → mall: answer 204 only once the event is durably in JetStream.

    Any other answer makes the platform retry on its schedule, so a failure here loses
    nothing; a retry of an accepted notification is de-duplicated downstream.
    """
    raw = await request.read()
    if len(raw) > MAX_NOTIFICATION_BYTES:
        raise InvalidInput("body_too_large", f"notification over {MAX_NOTIFICATION_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput("invalid_json", f"body is not JSON: {exc}") from None
    notice = wechatpay.parse_payment(body)
    await request.app[PUBLISHER].payment_captured(notice)
    return web.Response(status=204)


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
    """Readiness: the gateway can accept a payment (NATS connected)."""
    if not request.app[PUBLISHER].ready():
        return web.json_response({"status": "not ready"}, status=503)
    return web.json_response({"status": "ready"})
