"""Merchant coupons (商家券, "busifavor"): the calls a mall makes to mirror its coupons into the
shopper's WeChat card package (卡包). Behind the simulator's merchant-signature guard.

- ``POST /v3/marketing/busifavor/stocks``: create a stock → ``{stock_id, create_time}``; the
  same ``out_request_no`` again answers the same stock.
- ``POST /v3/marketing/busifavor/coupons/send`` ``{stock_id, appid, openid, coupon_code,
  out_request_no, send_time}``: the coupon lands in the shopper's card package (``SENDED``).
  The real platform sends merchant-API-code coupons through the mini-program's signed send
  plugin (发券插件); this server-side call stands in for it. Idempotent on ``out_request_no``.
- ``POST /v3/marketing/busifavor/coupons/use`` ``{coupon_code, stock_id, appid, use_time,
  use_request_no, openid?}``: ``USED`` (核销) → ``{stock_id, openid, wechatpay_use_time}``;
  idempotent on ``use_request_no``.
- ``POST /v3/marketing/busifavor/coupons/deactivate`` ``{coupon_code, stock_id,
  deactivate_request_no, deactivate_reason?}``: ``DEACTIVATED`` → ``{wechatpay_deactivate_time}``;
  idempotent on ``deactivate_request_no``.
- ``POST /v3/marketing/busifavor/coupons/return`` ``{coupon_code, stock_id,
  return_request_no}``: a ``USED`` coupon is ``SENDED`` again (退券) →
  ``{wechatpay_return_time}``; idempotent on ``return_request_no``.
- ``GET /v3/marketing/busifavor/users/{openid}/coupons/{coupon_code}/appids/{appid}``: one coupon.

Control: ``GET /control/busifavor/stocks``, ``GET /control/busifavor/coupons[?openid&stock_id]``,
``POST /control/busifavor/faults`` ``{operation: create_stock|send|use|deactivate|return,
fail_next, status?}`` (the next calls of that operation fail, 500 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from wechatpay_simulator.fields import ApiError, Fields, json_object, param_error
from wechatpay_simulator.inbound import fault_error
from wechatpay_simulator.keys import MERCHANT, STATE
from wechatpay_simulator.state import Fault, now, rfc3339

OPERATIONS = ("create_stock", "send", "use", "deactivate", "return")
STOCK_TYPES = {
    "NORMAL": "fixed_normal_coupon",
    "DISCOUNT": "discount_coupon",
    "EXCHANGE": "exchange_coupon",
}
SENDED, USED, DEACTIVATED = "SENDED", "USED", "DEACTIVATED"


@dataclass
class Stock:
    mchid: str
    stock_id: str
    out_request_no: str
    body: dict[str, Any]
    max_coupons: int
    max_per_user: int
    created: str

    def answer(self) -> dict[str, Any]:
        return {"stock_id": self.stock_id, "create_time": self.created}


@dataclass
class Coupon:
    stock_id: str
    coupon_code: str
    appid: str
    openid: str
    state: str
    sent: str
    used: str | None = None
    deactivated: str | None = None
    use_request_no: str | None = None
    deactivate_request_no: str | None = None
    return_request_nos: set[str] = field(default_factory=set)
    use_request_nos: set[str] = field(default_factory=set)
    returned: str | None = None

    def answer(self) -> dict[str, Any]:
        data = {
            "stock_id": self.stock_id,
            "coupon_code": self.coupon_code,
            "appid": self.appid,
            "openid": self.openid,
            "coupon_state": self.state,
            "receive_time": self.sent,
        }
        if self.used:
            data["use_time"] = self.used
        if self.deactivated:
            data["deactivate_time"] = self.deactivated
        return data


@dataclass
class BusifavorState:
    stocks: dict[str, Stock] = field(default_factory=dict)
    stock_requests: dict[tuple[str, str], str] = field(default_factory=dict)
    coupons: dict[tuple[str, str], Coupon] = field(default_factory=dict)  # (stock, code)
    sends: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    next_stock: int = 1_000_000


BUSIFAVOR = web.AppKey("busifavor", BusifavorState)


def _fault(request: web.Request, operation: str) -> None:
    fault = request.app[STATE].take_fault(f"busifavor_{operation}")
    if fault is not None:
        raise fault_error(fault)


def _not_found(what: str) -> ApiError:
    return ApiError(404, "RESOURCE_NOT_EXISTS", f"{what} does not exist")


def _stock(request: web.Request, stock_id: str) -> Stock:
    stock = request.app[BUSIFAVOR].stocks.get(stock_id)
    if stock is None or stock.mchid != request[MERCHANT].mchid:
        raise _not_found(f"stock {stock_id}")
    return stock


async def create_stock(request: web.Request) -> web.Response:
    _fault(request, "create_stock")
    mchid = request[MERCHANT].mchid
    body = await json_object(request)
    f = Fields(body)
    f.string("stock_name", max_len=21)
    belong = f.string("belong_merchant", max_len=32)
    f.string("goods_name", max_len=15)
    stock_type = f.string("stock_type", max_len=16)
    out_request_no = f.string("out_request_no", max_len=128)
    if f.string("coupon_code_mode", max_len=32) not in ("WECHATPAY_MODE", "MERCHANT_API"):
        raise param_error("coupon_code_mode must be WECHATPAY_MODE or MERCHANT_API")
    if belong != mchid:
        raise ApiError(403, "NO_AUTH", "belong_merchant must be the calling merchant")
    if stock_type not in STOCK_TYPES:
        raise param_error(f"stock_type must be one of {', '.join(STOCK_TYPES)}")
    rule = body.get("coupon_use_rule")
    if not isinstance(rule, dict) or not isinstance(rule.get(STOCK_TYPES[stock_type]), dict):
        raise param_error(f"coupon_use_rule.{STOCK_TYPES[stock_type]} is required")
    available = rule.get("coupon_available_time")
    if not isinstance(available, dict):
        raise param_error("coupon_use_rule.coupon_available_time is required")
    times = Fields(available)
    if times.time("available_end_time") <= times.time("available_begin_time"):
        raise param_error("available_end_time must be after available_begin_time")
    send_rule = body.get("stock_send_rule")
    if not isinstance(send_rule, dict):
        raise param_error("stock_send_rule is required")
    s = Fields(send_rule)
    max_coupons = s.integer("max_coupons", minimum=1)
    max_per_user = s.optional_integer("max_coupons_per_user", minimum=1) or max_coupons
    state = request.app[BUSIFAVOR]
    known = state.stock_requests.get((mchid, out_request_no))
    if known is not None:
        return web.json_response(state.stocks[known].answer())
    stock_id = str(state.next_stock)
    state.next_stock += 1
    stock = Stock(mchid, stock_id, out_request_no, body, max_coupons, max_per_user, rfc3339(now()))
    state.stocks[stock_id] = stock
    state.stock_requests[(mchid, out_request_no)] = stock_id
    return web.json_response(stock.answer())


async def send_coupon(request: web.Request) -> web.Response:
    _fault(request, "send")
    f = Fields(await json_object(request))
    stock = _stock(request, f.string("stock_id", max_len=20))
    appid, openid = f.string("appid", max_len=32), f.string("openid", max_len=128)
    code = f.string("coupon_code", max_len=32)
    out_request_no = f.string("out_request_no", max_len=128)
    f.optional_time("send_time")
    state = request.app[BUSIFAVOR]
    sent = state.sends.get((stock.mchid, out_request_no))
    if sent is not None:
        return web.json_response({"coupon_code": sent[1]})
    if (stock.stock_id, code) in state.coupons:
        raise ApiError(400, "INVALID_REQUEST", f"coupon_code {code} was sent before")
    held = [c for c in state.coupons.values() if c.stock_id == stock.stock_id]
    if len(held) >= stock.max_coupons:
        raise ApiError(400, "STOCK_NOT_ENOUGH", "the stock has no coupons left")
    if sum(c.openid == openid for c in held) >= stock.max_per_user:
        raise ApiError(400, "USER_ACHIEVE_COUPON_LIMIT", "the user holds the most allowed")
    state.coupons[(stock.stock_id, code)] = Coupon(
        stock.stock_id, code, appid, openid, SENDED, rfc3339(now())
    )
    state.sends[(stock.mchid, out_request_no)] = (stock.stock_id, code)
    return web.json_response({"coupon_code": code})


def _coupon(request: web.Request, stock_id: str, code: str) -> Coupon:
    _stock(request, stock_id)
    coupon = request.app[BUSIFAVOR].coupons.get((stock_id, code))
    if coupon is None:
        raise _not_found(f"coupon {code}")
    return coupon


async def use_coupon(request: web.Request) -> web.Response:
    _fault(request, "use")
    f = Fields(await json_object(request))
    coupon = _coupon(request, f.string("stock_id", max_len=20), f.string("coupon_code"))
    f.string("appid", max_len=32)
    f.time("use_time")
    use_request_no = f.string("use_request_no", max_len=128)
    if coupon.state == USED and coupon.use_request_no == use_request_no:
        pass  # the same use again: the same answer
    elif use_request_no in coupon.use_request_nos:
        raise ApiError(400, "INVALID_REQUEST", "use_request_no was used for an earlier use")
    elif coupon.state != SENDED:
        raise ApiError(400, "INVALID_REQUEST", f"the coupon is {coupon.state}, not SENDED")
    else:
        coupon.state, coupon.used, coupon.use_request_no = USED, rfc3339(now()), use_request_no
        coupon.use_request_nos.add(use_request_no)
    return web.json_response(
        {"stock_id": coupon.stock_id, "openid": coupon.openid, "wechatpay_use_time": coupon.used}
    )


async def deactivate_coupon(request: web.Request) -> web.Response:
    _fault(request, "deactivate")
    f = Fields(await json_object(request))
    coupon = _coupon(request, f.string("stock_id", max_len=20), f.string("coupon_code"))
    request_no = f.string("deactivate_request_no", max_len=128)
    f.optional_string("deactivate_reason", max_len=64)
    if coupon.state == DEACTIVATED and coupon.deactivate_request_no == request_no:
        pass
    elif coupon.state != SENDED:
        raise ApiError(400, "INVALID_REQUEST", f"the coupon is {coupon.state}, not SENDED")
    else:
        coupon.state, coupon.deactivated = DEACTIVATED, rfc3339(now())
        coupon.deactivate_request_no = request_no
    return web.json_response({"wechatpay_deactivate_time": coupon.deactivated})


async def return_coupon(request: web.Request) -> web.Response:
    _fault(request, "return")
    f = Fields(await json_object(request))
    coupon = _coupon(request, f.string("stock_id", max_len=20), f.string("coupon_code"))
    request_no = f.string("return_request_no", max_len=128)
    if request_no in coupon.return_request_nos:
        pass  # the same return again: the same answer
    elif coupon.state != USED:
        raise ApiError(400, "INVALID_REQUEST", f"the coupon is {coupon.state}, not USED")
    else:
        coupon.state, coupon.used, coupon.use_request_no = SENDED, None, None
        coupon.returned = rfc3339(now())
        coupon.return_request_nos.add(request_no)
    return web.json_response({"wechatpay_return_time": coupon.returned})


async def query_coupon(request: web.Request) -> web.Response:
    code, openid = request.match_info["coupon_code"], request.match_info["openid"]
    mchid = request[MERCHANT].mchid
    state = request.app[BUSIFAVOR]
    for coupon in state.coupons.values():
        mine = state.stocks[coupon.stock_id].mchid == mchid
        if mine and (coupon.coupon_code, coupon.openid) == (code, openid):
            return web.json_response(coupon.answer())
    raise _not_found(f"coupon {code}")


async def list_stocks(request: web.Request) -> web.Response:
    stocks = request.app[BUSIFAVOR].stocks.values()
    return web.json_response(
        {"stocks": [s.answer() | {"mchid": s.mchid, "request": s.body} for s in stocks]}
    )


async def list_coupons(request: web.Request) -> web.Response:
    wanted = {k: v for k, v in request.query.items() if k in ("openid", "stock_id", "coupon_code")}
    found = [
        c.answer()
        for c in request.app[BUSIFAVOR].coupons.values()
        if all(getattr(c, k) == v for k, v in wanted.items())
    ]
    return web.json_response({"coupons": found})


async def set_faults(request: web.Request) -> web.Response:
    f = Fields(await json_object(request))
    operation = f.string("operation", max_len=32)
    if operation not in OPERATIONS:
        raise param_error(f"operation is one of {', '.join(OPERATIONS)}")
    status = f.optional_integer("status", minimum=400) or 500
    if status > 599:
        raise param_error("status must be an HTTP error status")
    fault = Fault(f.integer("fail_next", minimum=0), status)
    request.app[STATE].faults[f"busifavor_{operation}"] = fault
    return web.json_response({"operation": operation, "status": status})


def setup_routes(app: web.Application) -> None:
    app[BUSIFAVOR] = BusifavorState()
    api = "/v3/marketing/busifavor"
    app.router.add_post(f"{api}/stocks", create_stock)
    app.router.add_post(f"{api}/coupons/send", send_coupon)
    app.router.add_post(f"{api}/coupons/use", use_coupon)
    app.router.add_post(f"{api}/coupons/deactivate", deactivate_coupon)
    app.router.add_post(f"{api}/coupons/return", return_coupon)
    app.router.add_get(
        f"{api}/users/{{openid}}/coupons/{{coupon_code}}/appids/{{appid}}", query_coupon
    )
    app.router.add_get("/control/busifavor/stocks", list_stocks)
    app.router.add_get("/control/busifavor/coupons", list_coupons)
    app.router.add_post("/control/busifavor/faults", set_faults)
