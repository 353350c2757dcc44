"""Pay-score (微信支付分) deductions: the "create and complete in one" service order a mall uses
to collect an amount from a shopper's pay-score (e.g. the discounts of a commitment card,
支付分先享卡, that was not fulfilled).

- ``POST /v3/payscore/serviceorder/direct-complete``: 200 with the order (``order_id``,
  ``state: DONE``, ``collection: {state: USER_PAID, paid_amount}``). The same
  ``out_order_no`` again answers the same order (never a second deduction) if its content
  matches, else 400 ``INVALID_REQUEST``.
- ``GET /control/payscore/orders[?out_order_no&openid&mchid]``: every order the platform holds.
- ``POST /control/payscore/faults`` ``{fail_next, status?}``: the next calls fail (500 default).

The platform API routes sit behind the simulator's merchant-signature guard like the others.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from wechatpay_simulator.fields import ApiError, Fields, json_object, param_error
from wechatpay_simulator.inbound import fault_error
from wechatpay_simulator.keys import MERCHANT, STATE
from wechatpay_simulator.state import Fault, now, rfc3339

FAULT = "payscore_direct_complete"
_COMPACT_TIME = 14  # yyyyMMddHHmmss


@dataclass(frozen=True)
class ServiceOrder:
    mchid: str
    appid: str
    openid: str
    service_id: str
    out_order_no: str
    order_id: str
    total_amount: int
    post_payments: list[dict[str, Any]]
    time_range: dict[str, str]
    created_at: str

    def same_request(self, other: ServiceOrder) -> bool:
        keys = ("appid", "openid", "service_id", "total_amount")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def answer(self) -> dict[str, Any]:
        return {
            "mchid": self.mchid,
            "appid": self.appid,
            "openid": self.openid,
            "service_id": self.service_id,
            "out_order_no": self.out_order_no,
            "order_id": self.order_id,
            "state": "DONE",
            "total_amount": self.total_amount,
            "post_payments": self.post_payments,
            "time_range": self.time_range,
            "collection": {
                "state": "USER_PAID",
                "total_amount": self.total_amount,
                "paid_amount": self.total_amount,
            },
            "create_time": self.created_at,
        }


@dataclass
class PayScoreState:
    #: (mchid, out_order_no) → the order.
    orders: dict[tuple[str, str], ServiceOrder] = field(default_factory=dict)


PAYSCORE = web.AppKey("payscore", PayScoreState)


def _order(mchid: str, body: dict[str, Any]) -> ServiceOrder:
    f = Fields(body)
    appid = f.string("appid", max_len=32)
    service_id = f.string("service_id", max_len=32)
    out_order_no = f.string("out_order_no", max_len=32)
    f.string("service_introduction", max_len=20 * 3)
    openid = f.string("openid", max_len=128)
    f.string("notify_url", max_len=255)
    total = f.integer("total_amount", minimum=1)
    payments = body.get("post_payments")
    if not isinstance(payments, list) or not payments:
        raise param_error("post_payments must list at least one payment")
    summed = 0
    for item in payments:
        if not isinstance(item, dict):
            raise param_error("post_payments items are objects")
        p = Fields(item)
        p.string("name", max_len=20 * 3)
        summed += p.integer("amount", minimum=1) * (p.optional_integer("count", minimum=1) or 1)
    if summed != total:
        raise param_error("total_amount must equal the sum of post_payments")
    time_range = body.get("time_range")
    if not isinstance(time_range, dict):
        raise param_error("time_range is required")
    for name in ("start_time", "end_time"):
        value = time_range.get(name)
        if not isinstance(value, str) or len(value) != _COMPACT_TIME or not value.isdigit():
            raise param_error(f"time_range.{name} must be yyyyMMddHHmmss")
    return ServiceOrder(
        mchid,
        appid,
        openid,
        service_id,
        out_order_no,
        f"{uuid.uuid4().int % 10**28:028d}",
        total,
        payments,
        {"start_time": time_range["start_time"], "end_time": time_range["end_time"]},
        rfc3339(now()),
    )


async def direct_complete(request: web.Request) -> web.Response:
    state, merchant = request.app[STATE], request[MERCHANT]
    fault = state.take_fault(FAULT)
    if fault is not None:
        raise fault_error(fault)
    order = _order(merchant.mchid, await json_object(request))
    orders = request.app[PAYSCORE].orders
    key = (merchant.mchid, order.out_order_no)
    known = orders.get(key)
    if known is not None:
        if not known.same_request(order):
            raise ApiError(400, "INVALID_REQUEST", "out_order_no was used for another order")
        return web.json_response(known.answer())
    orders[key] = order
    return web.json_response(order.answer())


async def list_orders(request: web.Request) -> web.Response:
    wanted = {k: v for k, v in request.query.items() if k in ("out_order_no", "openid", "mchid")}
    found = [
        o.answer()
        for o in request.app[PAYSCORE].orders.values()
        if all(getattr(o, k) == v for k, v in wanted.items())
    ]
    return web.json_response({"orders": found})


async def set_faults(request: web.Request) -> web.Response:
    f = Fields(await json_object(request))
    status = f.optional_integer("status", minimum=400) or 500
    if status > 599:
        raise param_error("status must be an HTTP error status")
    request.app[STATE].faults[FAULT] = Fault(f.integer("fail_next", minimum=0), status)
    return web.json_response({"fault": FAULT, "status": status})


def setup_routes(app: web.Application) -> None:
    app[PAYSCORE] = PayScoreState()
    app.router.add_post("/v3/payscore/serviceorder/direct-complete", direct_complete)
    app.router.add_get("/control/payscore/orders", list_orders)
    app.router.add_post("/control/payscore/faults", set_faults)
