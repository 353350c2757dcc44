"""Parking at the platform, for the car-park side of a mall:

- smart-mall parking state sync (停车状态同步): ``POST /v3/businesscircle/parkings``
  ``{appid, openid, brandid, plate_number, state: IN|OUT, time}`` → 204, recorded;
- pay-score parking (支付分停车):
  ``GET /v3/vehicle/parking/services/find?appid&plate_number&plate_color&openid`` → the plate's
  ``service_state`` (``NORMAL`` when enabled for automatic deduction, else ``OUT_SERVICE``);
  ``POST /v3/vehicle/parking/parkings`` ``{out_parking_no, plate_number, plate_color,
  start_time, parking_name, free_duration}`` → ``{id, …, state: NORMAL}`` (the parking_id),
  idempotent on ``out_parking_no``; refused (``400 INVALID_REQUEST``) for a plate not enabled;
  ``POST /v3/vehicle/transactions/parking`` ``{appid, out_trade_no, description, trade_scene:
  PARKING, amount{total}, parking_info{parking_id, plate_number, plate_color, start_time,
  end_time, charging_duration, parking_name, device_id}}`` → ``{…, trade_state: ACCEPTED}``,
  idempotent on ``out_trade_no`` (never a second deduction).

Control: ``POST /control/parking/pay-score-plates`` ``{appid, openid, plate_number,
plate_color}`` enables a plate; ``GET /control/parking/state-syncs[?plate_number]``;
``GET /control/parking/pay-score[?plate_number]`` (entries and deductions);
``POST /control/parking/faults`` ``{operation: state_sync|find|entry|deduction, fail_next,
status?}`` (the next calls of that operation fail, 500 by default).
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

OPERATIONS = ("state_sync", "find", "entry", "deduction")
COLORS = ("BLUE", "GREEN", "YELLOW", "BLACK", "WHITE", "LIMEGREEN")


@dataclass
class ParkingState:
    #: (appid, openid, plate_number) → colour, plates enabled for pay-score parking.
    enabled: dict[tuple[str, str, str], str] = field(default_factory=dict)
    state_syncs: list[dict[str, Any]] = field(default_factory=list)
    #: (mchid, out_parking_no) → the parking (entry) the platform created.
    parkings: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: (mchid, out_trade_no) → the deduction.
    deductions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


PARKING = web.AppKey("parking", ParkingState)


def _fault(request: web.Request, operation: str) -> None:
    fault = request.app[STATE].take_fault(f"parking_{operation}")
    if fault is not None:
        raise fault_error(fault)


def _color(f: Fields, name: str = "plate_color") -> str:
    color = f.string(name, max_len=16)
    if color not in COLORS:
        raise param_error(f"{name} is one of {', '.join(COLORS)}")
    return color


async def state_sync(request: web.Request) -> web.Response:
    _fault(request, "state_sync")
    body = await json_object(request)
    f = Fields(body)
    f.string("appid", max_len=32)
    f.string("openid", max_len=128)
    f.string("brandid", max_len=32)
    f.string("plate_number", max_len=16)
    if f.string("state", max_len=8) not in ("IN", "OUT"):
        raise param_error("state is IN or OUT")
    f.time("time")
    request.app[PARKING].state_syncs.append(
        body | {"mchid": request[MERCHANT].mchid, "received_at": rfc3339(now())}
    )
    return web.Response(status=204)


async def find_service(request: web.Request) -> web.Response:
    _fault(request, "find")
    f = Fields(dict(request.query))
    appid = f.string("appid", max_len=32)
    plate = f.string("plate_number", max_len=16)
    color = _color(f)
    openid = f.string("openid", max_len=128)
    enabled = request.app[PARKING].enabled.get((appid, openid, plate)) == color
    return web.json_response(
        {
            "plate_number": plate,
            "plate_color": color,
            "openid": openid,
            "service_state": "NORMAL" if enabled else "OUT_SERVICE",
        }
        | ({"service_open_time": rfc3339(now())} if enabled else {})
    )


async def create_parking(request: web.Request) -> web.Response:
    _fault(request, "entry")
    mchid = request[MERCHANT].mchid
    body = await json_object(request)
    f = Fields(body)
    out_parking_no = f.string("out_parking_no", max_len=32)
    plate = f.string("plate_number", max_len=16)
    color = _color(f)
    f.time("start_time")
    f.string("parking_name", max_len=128)
    f.integer("free_duration")
    state = request.app[PARKING]
    known = state.parkings.get((mchid, out_parking_no))
    if known is not None:
        return web.json_response(known)
    if (plate, color) not in {(p, c) for (_, _, p), c in state.enabled.items()}:
        raise ApiError(400, "INVALID_REQUEST", "the plate has not opened pay-score parking")
    parking = body | {"id": uuid.uuid4().hex, "state": "NORMAL", "mchid": mchid}
    state.parkings[(mchid, out_parking_no)] = parking
    return web.json_response(parking)


async def deduct(request: web.Request) -> web.Response:
    _fault(request, "deduction")
    mchid = request[MERCHANT].mchid
    body = await json_object(request)
    f = Fields(body)
    f.string("appid", max_len=32)
    out_trade_no = f.string("out_trade_no", max_len=32)
    f.string("description", max_len=128)
    if f.string("trade_scene", max_len=16) != "PARKING":
        raise param_error("trade_scene is PARKING")
    amount, info = body.get("amount"), body.get("parking_info")
    if not isinstance(amount, dict) or not isinstance(info, dict):
        raise param_error("amount and parking_info are objects")
    total = Fields(amount).integer("total", minimum=1)
    p = Fields(info)
    parking_id = p.string("parking_id", max_len=32)
    p.string("plate_number", max_len=16)
    _color(p)
    p.time("start_time")
    p.time("end_time")
    p.integer("charging_duration")
    state = request.app[PARKING]
    known = state.deductions.get((mchid, out_trade_no))
    if known is not None:
        return web.json_response(known)
    if not any(v["id"] == parking_id for v in state.parkings.values()):
        raise ApiError(400, "INVALID_REQUEST", f"parking {parking_id} does not exist")
    deduction = body | {
        "mchid": mchid,
        "transaction_id": f"4200{uuid.uuid4().int % 10**24:024d}",
        "trade_state": "ACCEPTED",
        "total": total,
        "create_time": rfc3339(now()),
    }
    state.deductions[(mchid, out_trade_no)] = deduction
    return web.json_response(deduction)


async def enable_plate(request: web.Request) -> web.Response:
    f = Fields(await json_object(request))
    key = (f.string("appid", max_len=32), f.string("openid"), f.string("plate_number"))
    request.app[PARKING].enabled[key] = _color(f)
    return web.json_response({"enabled": True})


async def list_state_syncs(request: web.Request) -> web.Response:
    plate = request.query.get("plate_number")
    syncs = request.app[PARKING].state_syncs
    return web.json_response(
        {"state_syncs": [s for s in syncs if plate is None or s["plate_number"] == plate]}
    )


async def list_pay_score(request: web.Request) -> web.Response:
    plate = request.query.get("plate_number")
    state = request.app[PARKING]
    return web.json_response(
        {
            "parkings": [
                v for v in state.parkings.values() if plate is None or v["plate_number"] == plate
            ],
            "deductions": [
                v
                for v in state.deductions.values()
                if plate is None or v["parking_info"]["plate_number"] == plate
            ],
        }
    )


async def set_faults(request: web.Request) -> web.Response:
    f = Fields(await json_object(request))
    operation = f.string("operation", max_len=32)
    if operation not in OPERATIONS:
        raise param_error(f"operation is one of {', '.join(OPERATIONS)}")
    status = f.optional_integer("status", minimum=400) or 500
    if status > 599:
        raise param_error("status must be an HTTP error status")
    request.app[STATE].faults[f"parking_{operation}"] = Fault(f.integer("fail_next"), status)
    return web.json_response({"operation": operation, "status": status})


def setup_routes(app: web.Application) -> None:
    app[PARKING] = ParkingState()
    app.router.add_post("/v3/businesscircle/parkings", state_sync)
    app.router.add_get("/v3/vehicle/parking/services/find", find_service)
    app.router.add_post("/v3/vehicle/parking/parkings", create_parking)
    app.router.add_post("/v3/vehicle/transactions/parking", deduct)
    app.router.add_post("/control/parking/pay-score-plates", enable_plate)
    app.router.add_get("/control/parking/state-syncs", list_state_syncs)
    app.router.add_get("/control/parking/pay-score", list_pay_score)
    app.router.add_post("/control/parking/faults", set_faults)
