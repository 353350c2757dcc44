"""WeChat Pay → mall: the notification webhooks.

``POST /wechatpay/notifications/{mchid}`` is the ``notify_url`` a merchant registers. It
answers 204 only once the event is durably in JetStream; any other answer makes the platform
retry on its schedule (about a day), so a failure here loses nothing, and a retry of an
accepted notification publishes nothing new (``Nats-Msg-Id``).

Refusals on this route are answered in the platform's shape, not problem+json: WeChat Pay
reads ``{"code": "FAIL", "message": "…"}`` from a non-2xx answer and shows ``message`` in
the merchant's notification log. Our stable code leads ``message`` and is repeated in
``error_code`` for machines, so one string matches the platform's log and ours.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web
from kit.errors import AppError, InvalidInput, NotFound
from wechatpay.notifications import open_notification

from gateway.adapters import wechatpay
from gateway.adapters.replays import fingerprint
from gateway.domain.notifications import AuthorizationNotice, Notice, PaymentNotice
from gateway.entrypoints.keys import PUBLISHER, WEBHOOKS
from gateway.entrypoints.problems import STATUS
from gateway.service_layer import notifications

log = structlog.get_logger(__name__)

MAX_NOTIFICATION_BYTES = 64 * 1024
#: Codes whose HTTP status is not their error kind's. The shop is well-formed and signed but
#: unknown (422), and a body too large is the one thing HTTP has its own status for (413).
_STATUS_BY_CODE = {"unknown_shop": 422, "body_too_large": 413}


def platform_refusal(status: int, code: str, detail: str) -> web.Response:
    body = {"code": "FAIL", "message": f"{code}: {detail}", "error_code": code}
    return web.json_response(body, status=status)


async def _read(request: web.Request) -> bytes:
    too_large = InvalidInput("body_too_large", f"notification over {MAX_NOTIFICATION_BYTES} bytes")
    if (request.content_length or 0) > MAX_NOTIFICATION_BYTES:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked, and over the server's own limit
        raise too_large from None
    if len(raw) > MAX_NOTIFICATION_BYTES:
        raise too_large
    return raw


def _traced(notice: Notice) -> dict[str, str]:
    """What a refusal record names (never the openid)."""
    fields = {"notification_id": notice.notification_id, "appid": notice.appid}
    if isinstance(notice, AuthorizationNotice):
        return fields
    fields.update(shop_number=notice.shop_number, transaction_id=notice.transaction_id)
    if not isinstance(notice, PaymentNotice):
        fields["refund_id"] = notice.refund_id
    return fields


async def signed_notification(request: web.Request) -> web.Response:
    webhooks = request.app[WEBHOOKS]
    mchid = request.match_info["mchid"]
    traced: dict[str, Any] = {"mchid": mchid}
    try:
        merchant = webhooks.merchants.get(mchid)
        if merchant is None:
            raise NotFound("unknown_merchant", f"no merchant {mchid[:32]!r} is configured here")
        raw = await _read(request)
        opened = open_notification(
            request.headers,
            raw,
            platform_keys=merchant.platform_keys,
            apiv3_key=merchant.apiv3_key,
            now=webhooks.clock(),
            max_skew_s=webhooks.max_skew_s,
        )
        traced.update(notification_id=opened.id, event_type=opened.event_type)
        notice = wechatpay.parse_notice(opened)
        traced.update(_traced(notice))
        await notifications.accept(
            notice,
            fingerprint(opened.event_type, opened.resource),
            shops=webhooks.shops,
            directory_ready=webhooks.directory_ready(),
            guard=webhooks.guard,
            publisher=request.app[PUBLISHER],
        )
    except AppError as exc:
        status = _STATUS_BY_CODE.get(exc.code, STATUS[exc.kind])
        structlog.contextvars.bind_contextvars(code=exc.code)
        # The record of every refusal: the platform retries it, ops read why.
        event = "notification_not_stored" if status >= 500 else "notification_refused"
        log.warning(event, code=exc.code, detail=exc.message, **traced)
        return platform_refusal(status, exc.code, exc.message)
    return web.Response(status=204)


async def unsigned_notification(request: web.Request) -> web.Response:
    """Local demos only (``WECHATPAY_ACCEPT_UNSIGNED=true``): a payment whose ``resource`` is
    already plaintext, no signature, answered in problem+json. Never route it in production.
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
