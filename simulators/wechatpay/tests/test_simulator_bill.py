"""GET /control/bill: the platform's statement of what it notified, for reconciliation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import Merchant, Settings

MCHID, OTHER = "1900000301", "1900000302"
APPID = "wxbill000000000001"


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[tuple[Running, aiohttp.ClientSession]]:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/n", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/n"
    merchants = [Merchant(MCHID, notify_url=url), Merchant(OTHER, notify_url=url)]
    settings = Settings.create(merchants, require_synced_points_for_refund=False)
    try:
        async with serve(settings) as running, aiohttp.ClientSession() as http:
            yield running, http
    finally:
        await runner.cleanup()


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, json=body) as resp:
        assert resp.status == 202, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_the_bill_lists_payments_and_refunds_of_the_range(
    sim: tuple[Running, aiohttp.ClientSession],
) -> None:
    running, http = sim
    now = datetime.now(UTC)
    paid = {"appid": APPID, "shop_number": "S-1", "openid": "o-bill"}
    mine = await post(
        http, f"{running.url}/control/payments", {**paid, "mchid": MCHID, "amount": 1234}
    )
    other = await post(
        http, f"{running.url}/control/payments", {**paid, "mchid": OTHER, "amount": 99}
    )
    old = await post(
        http,
        f"{running.url}/control/payments",
        {**paid, "mchid": MCHID, "amount": 5, "time_end": "2020-01-01T10:00:00+08:00"},
    )
    refund = await post(
        http,
        f"{running.url}/control/refunds",
        {"transaction_id": mine["transaction_id"], "refund_amount": 234},
    )
    since = (now - timedelta(minutes=1)).isoformat()
    async with http.get(
        f"{running.url}/control/bill", params={"since": since, "mchid": MCHID}
    ) as resp:
        assert resp.status == 200
        bill = await resp.json()
    [payment] = bill["payments"]
    assert payment["transaction_id"] == mine["transaction_id"]
    assert (payment["amount"], payment["refunded"], payment["appid"]) == (1234, 234, APPID)
    assert (payment["points_synced"], payment["synced_points"]) == (False, None)
    assert [(r["refund_id"], r["refund_amount"]) for r in bill["refunds"]] == [
        (refund["refund_id"], 234)
    ]
    async with http.get(f"{running.url}/control/bill", params={"since": since}) as resp:
        everyone = {p["transaction_id"] for p in (await resp.json())["payments"]}
    assert everyone == {mine["transaction_id"], other["transaction_id"]}  # not the 2020 one
    assert old["transaction_id"] not in everyone
    async with http.get(f"{running.url}/control/bill", params={"since": "yesterday"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "PARAM_ERROR"
