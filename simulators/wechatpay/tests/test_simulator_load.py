"""Load mode: a step is prepared (every notification signed and encrypted), then sent open
loop at its rate, with refunds, re-deliveries and refunds that come before their payment.

A real simulator on a free port delivers to a tiny aiohttp "mall" here that verifies each
delivery with ``wechatpay.signing.verify`` and decrypts it with ``wechatpay.aead``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from wechatpay import aead, signing
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import Merchant, Settings
from wechatpay_simulator.state import CST

MCHID = "1900000109"
APIV3_KEY = "0123456789abcdefghijABCDEFGHIJ01"


@dataclass
class Arrival:
    envelope_id: str
    event_type: str
    resource: dict[str, Any]
    verified: bool


@dataclass
class Mall:
    platform_key: signing.PublicKey
    arrivals: list[Arrival] = field(default_factory=list)
    #: Answers are held until this is set (to show the sending does not wait for them).
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    #: Transaction ids refused once with 500 (the platform must retry them).
    refuse_once: set[str] = field(default_factory=set)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        h = request.headers
        message = signing.response_message(h["Wechatpay-Timestamp"], h["Wechatpay-Nonce"], body)
        verified = signing.verify(self.platform_key, message, h["Wechatpay-Signature"])
        envelope = json.loads(body)
        r = envelope["resource"]
        resource = json.loads(
            aead.decrypt(APIV3_KEY, r["nonce"], r["associated_data"], r["ciphertext"])
        )
        self.arrivals.append(Arrival(envelope["id"], envelope["event_type"], resource, verified))
        await self.gate.wait()
        key = resource.get("refund_id") or resource["transaction_id"]
        if key in self.refuse_once:
            self.refuse_once.discard(key)
            return web.json_response({"code": "FAIL", "message": "later"}, status=500)
        return web.Response(status=204)


@dataclass
class World:
    sim: Running
    mall: Mall
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.sim.url + path, json=body) as resp:
            return resp.status, await resp.json()

    async def report(self, step_id: str, detail: bool = False) -> dict[str, Any]:
        query = "?detail=payments" if detail else ""
        status, answer = await self.call("GET", f"/control/load/steps/{step_id}{query}")
        assert status == 200, answer
        return dict(answer)

    async def until_acked(self, step_id: str) -> dict[str, Any]:
        for _ in range(400):
            status, answer = await self.call(
                "GET", f"/control/load/steps/{step_id}?detail=progress"
            )
            assert status == 200, answer
            if answer["status"] == "SENT" and answer["unsent"] == answer["unacked"] == 0:
                return await self.report(step_id, detail=True)
            await asyncio.sleep(0.05)
        raise AssertionError(f"step never fully acknowledged: {answer}")


@pytest_asyncio.fixture
async def world() -> AsyncIterator[World]:
    key = signing.generate_private_key()
    mall = Mall(key.public_key())
    app = web.Application()
    app.router.add_post("/notify", mall.handle)
    async with TestServer(app, host="127.0.0.1") as receiver:
        merchant = Merchant(
            MCHID, apiv3_key=APIV3_KEY, notify_url=str(receiver.make_url("/notify"))
        )
        settings = Settings.create([merchant], platform_key=key, retry_scale=0.001)
        async with serve(settings) as sim, aiohttp.ClientSession() as http:
            yield World(sim, mall, http)


def _step(appids: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "malls": [{"appid": a, "shops": [f"{a}-S1", f"{a}-S2"]} for a in appids],
        "seed": 7,
        **extra,
    }


async def test_a_step_sends_its_mix_signed_and_encrypted(world: World) -> None:
    appids = [f"wx{uuid.uuid4().hex[:10]}" for _ in range(2)]
    body = _step(
        appids,
        rate=200,
        duration_s=0.5,
        refund_share=0.2,
        redelivery_share=0.2,
        early_refund_share=0.1,
    )
    status, created = await world.call("POST", "/control/load/steps", body)
    assert status == 201, created
    planned = created["planned"]
    assert planned["payment"] == 100
    assert planned["refund"] > 0
    assert planned["early_refund"] > 0
    assert planned["redelivery"] > 0
    world.mall.gate.set()
    status, started = await world.call("POST", f"/control/load/steps/{created['step_id']}/start")
    assert status == 202, started
    report = await world.until_acked(created["step_id"])

    arrivals = world.mall.arrivals
    assert all(a.verified for a in arrivals)
    assert len(arrivals) == sum(planned.values()) == report["acked"]
    payments = [a for a in arrivals if a.event_type == "MALL_TRANSACTION.SUCCESS"]
    refunds = [a for a in arrivals if a.event_type == "MALL_REFUND.SUCCESS"]
    assert {a.resource["appid"] for a in payments} == set(appids)
    assert all(a.resource["shop_number"].startswith(a.resource["appid"]) for a in payments)
    # A re-delivery is the same notification (same envelope id), sent again.
    ids = [a.envelope_id for a in payments]
    assert len(ids) - len(set(ids)) == planned["redelivery"]
    assert len({a.resource["transaction_id"] for a in payments}) == planned["payment"]
    assert len(refunds) == planned["refund"] + planned["early_refund"]
    # Some refunds reached the mall before their payment did.
    first_seen: dict[tuple[str, str], int] = {}
    for i, a in enumerate(arrivals):
        first_seen.setdefault((a.event_type, a.resource["transaction_id"]), i)
    early = [
        r
        for r in refunds
        if first_seen[("MALL_REFUND.SUCCESS", r.resource["transaction_id"])]
        < first_seen[("MALL_TRANSACTION.SUCCESS", r.resource["transaction_id"])]
    ]
    assert len(early) >= planned["early_refund"]
    # The report: every payment with when it was due, sent and acknowledged.
    assert len(report["payments"]) == planned["payment"]
    assert all(sent is not None and acked >= sent for _, _, sent, acked, _ in report["payments"])
    assert report["gave_up"] == 0
    acknowledged_p99 = report["ack_p99_ms"]
    assert acknowledged_p99 is not None  # every delivery was answered, so the step reports it
    # The platform's statement knows the step's payments and refunds.
    since = (datetime.now(CST) - timedelta(minutes=5)).isoformat()
    status, bill = await world.call("GET", f"/control/bill?since={since.replace('+', '%2B')}")
    assert status == 200, bill
    billed = {p["transaction_id"] for p in bill["payments"]}
    assert {a.resource["transaction_id"] for a in payments} <= billed
    assert len(bill["refunds"]) == len(refunds)


async def test_sending_is_open_loop_and_refusals_are_retried(world: World) -> None:
    shares = {"refund_share": 0, "redelivery_share": 0, "early_refund_share": 0}
    body = _step([f"wx{uuid.uuid4().hex[:10]}"], rate=100, duration_s=0.3, **shares)
    status, created = await world.call("POST", "/control/load/steps", body)
    assert status == 201, created
    step_id = created["step_id"]
    await world.call("POST", f"/control/load/steps/{step_id}/start")
    # The mall answers nothing yet: every notification still leaves at its moment.
    for _ in range(400):
        held = await world.report(step_id)
        if held["sent"] == 30:
            break
        await asyncio.sleep(0.05)
    assert held["sent"] == 30
    assert held["acked"] == 0
    assert held["status"] == "SENT"
    world.mall.refuse_once.update(a.resource["transaction_id"] for a in world.mall.arrivals[:5])
    world.mall.gate.set()
    report = await world.until_acked(step_id)
    assert report["retried"] == 5
    assert report["acked"] == 30
    refused_ids = {a.resource["transaction_id"] for a in world.mall.arrivals[:5]}
    again = [a for a in world.mall.arrivals if a.resource["transaction_id"] in refused_ids]
    assert len(again) == 10
    assert all(a.verified for a in again)
    status, refused = await world.call("POST", f"/control/load/steps/{step_id}/start")
    assert status == 409, refused


async def test_a_step_is_refused_without_a_rate_or_malls(world: World) -> None:
    status, answer = await world.call("POST", "/control/load/steps", {"rate": 0, "duration_s": 1})
    assert status == 400
    assert answer["code"] == "PARAM_ERROR"
    status, answer = await world.call("POST", "/control/load/steps", {"rate": 10, "duration_s": 1})
    assert status == 400
    assert "malls" in answer["message"]
    status, answer = await world.call("GET", "/control/load/steps/nope")
    assert status == 404
