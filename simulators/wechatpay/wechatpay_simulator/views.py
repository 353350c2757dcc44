"""aiohttp handlers: translate between HTTP and the platform's rules, nothing more.

``/v3/...`` is the platform API the mall calls (signed both ways, see ``guard``);
``/control/...`` is how tests, ``make run`` and benchmarks drive the simulated platform.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web
from wechatpay import signing

from wechatpay_simulator import inbound, outbound
from wechatpay_simulator.config import ConfigError, Merchant
from wechatpay_simulator.fields import ApiError, Fields, json_object, param_error
from wechatpay_simulator.keys import DELIVERER, MERCHANT, SETTINGS, STATE
from wechatpay_simulator.state import Delivery, Fault, PointsSync, now


def _accepted(delivery: Delivery, **extra: Any) -> web.Response:
    return web.json_response({"notification_id": delivery.id, **extra}, status=202)


# -- platform API (mall -> platform) ---------------------------------------------------------


async def points_notify(request: web.Request) -> web.Response:
    state, merchant = request.app[STATE], request[MERCHANT]
    text = await request.text()
    try:
        body: Any = await request.json()
    except ValueError:
        body = text
    try:
        fault = state.take_fault("points_notify")
        if fault is not None:
            raise inbound.fault_error(fault)
        inbound.check_points_sync(state, merchant, body)
    except ApiError as error:
        state.add_points_sync(PointsSync(now(), merchant.mchid, error.status, error.code, body))
        raise
    state.add_points_sync(PointsSync(now(), merchant.mchid, 204, None, body))
    return web.Response(status=204)


async def user_authorization(request: web.Request) -> web.Response:
    state = request.app[STATE]
    fault = state.take_fault("user_authorization")
    if fault is not None:
        raise inbound.fault_error(fault)
    answer = inbound.user_authorization(
        state, request[MERCHANT], request.match_info["openid"], dict(request.query)
    )
    return web.json_response(answer)


async def commit_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    fault = state.take_fault("commit_status")
    if fault is not None:
        raise inbound.fault_error(fault)
    answer = inbound.commit_status(
        state, request[MERCHANT], request.match_info["openid"], dict(request.query)
    )
    return web.json_response(answer)


# -- control API: notifications out ----------------------------------------------------------


async def create_payment(request: web.Request) -> web.Response:
    delivery = outbound.payment(request.app[STATE], await json_object(request))
    request.app[DELIVERER].start(delivery)
    return _accepted(delivery, transaction_id=delivery.resource["transaction_id"])


async def create_refund(request: web.Request) -> web.Response:
    app = request.app
    delivery = outbound.refund(app[STATE], app[SETTINGS], await json_object(request))
    app[DELIVERER].start(delivery)
    resource = delivery.resource
    return _accepted(
        delivery, transaction_id=resource["transaction_id"], refund_id=resource["refund_id"]
    )


async def create_authorization(request: web.Request) -> web.Response:
    delivery = outbound.authorization(request.app[STATE], await json_object(request))
    request.app[DELIVERER].start(delivery)
    return _accepted(delivery)


async def create_deauthorization(request: web.Request) -> web.Response:
    auth = outbound.deauthorization(request.app[STATE], await json_object(request))
    return web.json_response(auth.answer())


async def create_probe(request: web.Request) -> web.Response:
    delivery = outbound.probe(request.app[STATE], await json_object(request))
    request.app[DELIVERER].start(delivery)
    return _accepted(delivery)


def _delivery(request: web.Request) -> Delivery:
    delivery = request.app[STATE].deliveries.get(request.match_info["id"])
    if delivery is None:
        raise ApiError(404, "RESOURCE_NOT_EXISTS", "no such notification")
    return delivery


async def list_notifications(request: web.Request) -> web.Response:
    filters = {k: request.query[k] for k in ("event_type", "status", "mchid") if k in request.query}
    transaction_id = request.query.get("transaction_id")
    found = [
        d.summary()
        for d in request.app[STATE].deliveries.values()
        if all(getattr(d, k) == v for k, v in filters.items())
        and (transaction_id is None or d.resource.get("transaction_id") == transaction_id)
    ]
    return web.json_response({"notifications": found})


async def get_notification(request: web.Request) -> web.Response:
    return web.json_response(_delivery(request).detail())


async def redeliver_notification(request: web.Request) -> web.Response:
    delivery = _delivery(request)
    request.app[DELIVERER].redeliver(delivery)
    return _accepted(delivery)


# -- control API: what the platform received and knows ---------------------------------------


async def list_points_syncs(request: web.Request) -> web.Response:
    transaction_id = request.query.get("transaction_id")
    status = request.query.get("status")

    def wanted(sync: PointsSync) -> bool:
        if status is not None and str(sync.status) != status:
            return False
        if transaction_id is None:
            return True
        return isinstance(sync.body, dict) and sync.body.get("transaction_id") == transaction_id

    found = [s.as_json() for s in request.app[STATE].points_syncs if wanted(s)]
    return web.json_response({"points_syncs": found})


async def set_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    for operation, spec in (await json_object(request)).items():
        if operation not in inbound.FAULTABLE:
            raise param_error(
                f"{operation}: faults exist for {', '.join(sorted(inbound.FAULTABLE))}"
            )
        if not isinstance(spec, dict):
            raise param_error(f"{operation} must be an object")
        f = Fields(spec)
        fail_next = f.integer("fail_next", minimum=0)
        status = f.optional_integer("status", minimum=400) or 500
        if status > 599:
            raise param_error("status must be an HTTP error status")
        state.faults[operation] = Fault(fail_next, status)
    return _faults(request)


async def clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return _faults(request)


def _faults(request: web.Request) -> web.Response:
    faults = request.app[STATE].faults
    return web.json_response({"faults": {k: dataclasses.asdict(v) for k, v in faults.items()}})


def _merchant_json(merchant: Merchant) -> dict[str, Any]:
    return {
        "mchid": merchant.mchid,
        "apiv3_key": merchant.apiv3_key,
        "serial_no": merchant.serial_no,
        "has_public_key": merchant.public_key is not None,
        "notify_url": merchant.notify_url,
        "auth_notify_url": merchant.auth_notify_url,
    }


async def platform_info(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    pem = signing.public_key_pem(settings.platform_public_key).decode()
    return web.json_response(
        {
            "platform_serial": settings.platform_serial,
            "platform_public_key_pem": pem,
            "merchants": [_merchant_json(m) for m in request.app[STATE].merchants.values()],
        }
    )


async def put_merchant(request: web.Request) -> web.Response:
    """Add or change a merchant; fields left out keep their value (a new APIv3 key if new)."""
    state, mchid = request.app[STATE], request.match_info["mchid"]
    f = Fields(await json_object(request))
    current = state.merchants.get(mchid) or Merchant(mchid)
    pem = f.optional_string("public_key_pem", max_len=10_000)
    try:
        public_key = signing.load_public_key(pem.encode()) if pem else current.public_key
        merchant = Merchant(
            mchid,
            apiv3_key=f.optional_string("apiv3_key", max_len=32) or current.apiv3_key,
            public_key=public_key,
            serial_no=f.optional_string("serial_no", max_len=64)
            or (None if pem else current.serial_no),
            notify_url=f.optional_string("notify_url", max_len=2048) or current.notify_url,
            auth_notify_url=f.optional_string("auth_notify_url", max_len=2048)
            or current.auth_notify_url,
        )
    except (ConfigError, ValueError) as exc:
        raise param_error(str(exc)) from None
    state.merchants[mchid] = merchant
    return web.json_response(_merchant_json(merchant))


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
