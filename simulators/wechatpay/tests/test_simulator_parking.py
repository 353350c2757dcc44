"""The simulator's parking routes: state sync, and pay-score parking that never deducts twice."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest_asyncio
from wechatpay import signing
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import Merchant, Settings
from yarl import URL

MCHID = "1900000109"
APPID = "wx5imparking00001"
PLATFORM_SERIAL = "PUB_KEY_ID_0114232134912410000000000099"


@dataclass
class World:
    sim: Running
    http: aiohttp.ClientSession
    key: signing.PrivateKey
    serial: str

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        text = json.dumps(body) if body is not None else ""
        auth = signing.authorize(
            mchid=MCHID,
            serial_no=self.serial,
            private_key=self.key,
            method=method,
            path=path,
            body=text,
        )
        headers = {"Authorization": auth.header(), "Content-Type": "application/json"}
        url = URL(self.sim.url + path, encoded=True)
        async with self.http.request(method, url, data=text or None, headers=headers) as resp:
            raw = await resp.text()
            return resp.status, json.loads(raw) if raw else None

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.sim.url + path, json=body) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()


@pytest_asyncio.fixture(scope="module")
async def w() -> AsyncIterator[World]:
    key = signing.generate_private_key()
    settings = Settings.create(
        [Merchant(MCHID, public_key=key.public_key())],
        platform_key=signing.generate_private_key(),
        platform_serial=PLATFORM_SERIAL,
    )
    async with serve(settings) as sim, aiohttp.ClientSession() as http:
        serial = sim.state.merchants[MCHID].serial_no
        assert serial is not None
        yield World(sim, http, key, serial)


def plate() -> str:
    return f"粤B{uuid.uuid4().int % 100_000:05d}"


async def test_state_syncs_are_recorded_and_checked(w: World) -> None:
    number = plate()
    body = {
        "appid": APPID,
        "openid": "o-parker",
        "brandid": "1000",
        "plate_number": number,
        "state": "IN",
        "time": "2026-11-26T10:00:00+08:00",
    }

    accepted = await w.call("POST", "/v3/businesscircle/parkings", body)
    refused = await w.call("POST", "/v3/businesscircle/parkings", body | {"state": "PARKED"})

    assert accepted == (204, None)
    assert refused[0] == 400
    assert refused[1]["code"] == "PARAM_ERROR"
    listed = await w.control("GET", f"/control/parking/state-syncs?plate_number={number}")
    assert [s["state"] for s in listed["state_syncs"]] == ["IN"]


async def test_pay_score_parking_enters_an_enabled_plate_and_deducts_once(w: World) -> None:
    number, openid = plate(), f"o-{uuid.uuid4().hex[:10]}"
    query = {"appid": APPID, "plate_number": number, "plate_color": "BLUE", "openid": openid}
    find = "/v3/vehicle/parking/services/find?" + urlencode(query)
    entry = {
        "out_parking_no": uuid.uuid4().hex,
        "plate_number": number,
        "plate_color": "BLUE",
        "start_time": "2026-11-26T10:00:00+08:00",
        "parking_name": "P1",
        "free_duration": 900,
    }

    before = await w.call("GET", find)
    refused = await w.call("POST", "/v3/vehicle/parking/parkings", entry)
    await w.control(
        "POST",
        "/control/parking/pay-score-plates",
        {"appid": APPID, "openid": openid, "plate_number": number, "plate_color": "BLUE"},
    )
    after = await w.call("GET", find)
    status, parking = await w.call("POST", "/v3/vehicle/parking/parkings", entry)
    again = await w.call("POST", "/v3/vehicle/parking/parkings", entry)
    deduction = {
        "appid": APPID,
        "out_trade_no": uuid.uuid4().hex,
        "description": "停车费",
        "trade_scene": "PARKING",
        "amount": {"total": 1500, "currency": "CNY"},
        "parking_info": {
            "parking_id": parking["id"],
            "plate_number": number,
            "plate_color": "BLUE",
            "start_time": "2026-11-26T10:00:00+08:00",
            "end_time": "2026-11-26T12:10:00+08:00",
            "charging_duration": 7800,
            "parking_name": "P1",
            "device_id": "out-1",
        },
    }
    first = await w.call("POST", "/v3/vehicle/transactions/parking", deduction)
    second = await w.call("POST", "/v3/vehicle/transactions/parking", deduction)

    assert before[1]["service_state"] == "OUT_SERVICE"
    assert refused[0] == 400
    assert after[1]["service_state"] == "NORMAL"
    assert status == 200
    assert again == (200, parking)
    assert first[0] == 200
    assert first[1]["trade_state"] == "ACCEPTED"
    assert second == first
    listed = await w.control("GET", f"/control/parking/pay-score?plate_number={number}")
    assert len(listed["parkings"]) == 1
    assert [d["amount"]["total"] for d in listed["deductions"]] == [1500]
