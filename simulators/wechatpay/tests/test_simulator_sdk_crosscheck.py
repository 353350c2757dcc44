"""Cross-check with an independent implementation, the ``wechatpayv3`` SDK (test-only): its
crypto helpers decrypt what the simulator encrypts, verify what it signs, and sign requests
the simulator accepts. Only the SDK's helpers are used, not its call wrappers (see
WECHATPAY.md for the wrappers' known slips).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from wechatpay import signing
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import Merchant, Settings
from wechatpayv3 import utils as sdk  # type: ignore[import-untyped]

MCHID = "1900000109"
APPID = "wx5imsdkcrosscheck"
APIV3_KEY = "sdkCrossCheck0123456789abcdefXYZ"


@dataclass
class Inbox:
    """A mall that keeps what it receives, raw, and acknowledges it."""

    received: list[tuple[dict[str, str], str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.text()))
        return web.Response(status=204)

    async def wait_for(self, notification_id: str) -> tuple[dict[str, str], str]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for headers, body in self.received:
                if json.loads(body)["id"] == notification_id:
                    return headers, body
            await asyncio.sleep(0.02)
        raise AssertionError(f"{notification_id} never arrived")


@dataclass
class World:
    sim: Running
    inbox: Inbox
    http: aiohttp.ClientSession
    sdk_platform_key: Any  # the platform public key, loaded by the SDK from the PEM
    sdk_merchant_key: Any  # the merchant private key, loaded by the SDK from the PEM
    merchant_serial: str

    async def control(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(self.sim.url + path, json=body) as resp:
            assert resp.status == 202, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data


@contextlib.asynccontextmanager
async def mall(inbox: Inbox) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/notify", inbox.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/notify"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module")
async def w() -> AsyncIterator[World]:
    merchant_key = signing.generate_private_key()
    inbox = Inbox()
    async with mall(inbox) as url, aiohttp.ClientSession() as http:
        merchant = Merchant(MCHID, APIV3_KEY, merchant_key.public_key(), notify_url=url)
        settings = Settings.create([merchant])
        async with serve(settings) as sim:
            platform_pem = signing.public_key_pem(settings.platform_public_key).decode()
            yield World(
                sim,
                inbox,
                http,
                sdk.load_public_key(platform_pem),
                sdk.load_private_key(signing.private_key_pem(merchant_key).decode()),
                sim.state.merchants[MCHID].serial_no or "",
            )


def sdk_decrypt(body: str) -> dict[str, Any]:
    resource = json.loads(body)["resource"]
    plain = sdk.aes_decrypt(
        nonce=resource["nonce"],
        ciphertext=resource["ciphertext"],
        associated_data=resource["associated_data"],
        apiv3_key=APIV3_KEY,
    )
    assert plain is not None, "the SDK could not decrypt the resource"
    data: dict[str, Any] = json.loads(plain)
    return data


def sdk_verifies(w: World, headers: dict[str, str], body: str) -> bool:
    return bool(
        sdk.rsa_verify(
            headers["Wechatpay-Timestamp"],
            headers["Wechatpay-Nonce"],
            body,
            headers["Wechatpay-Signature"],
            w.sdk_platform_key,
        )
    )


async def test_the_sdk_verifies_and_decrypts_a_payment_notification(w: World) -> None:
    openid = f"o-{uuid.uuid4().hex[:16]}"
    answer = await w.control(
        "/control/payments",
        {"appid": APPID, "mchid": MCHID, "shop_number": "SHOP-009", "openid": openid,
         "amount": 4_321},
    )  # fmt: skip

    headers, body = await w.inbox.wait_for(answer["notification_id"])

    assert sdk_verifies(w, headers, body)
    assert not sdk_verifies(w, headers, body + " ")  # a changed body does not verify
    resource = sdk_decrypt(body)
    assert resource["transaction_id"] == answer["transaction_id"]
    assert resource["openid"] == openid
    assert resource["amount"] == 4_321


async def test_the_sdk_verifies_and_decrypts_an_authorization_notification(w: World) -> None:
    openid = f"o-{uuid.uuid4().hex[:16]}"
    answer = await w.control(
        "/control/authorizations",
        {"appid": APPID, "mchid": MCHID, "openid": openid, "code": "C-1",
         "auth_type": "REGISTERED_AND_AUTHORIZATION_MODE"},
    )  # fmt: skip

    headers, body = await w.inbox.wait_for(answer["notification_id"])

    assert sdk_verifies(w, headers, body)
    assert sdk_decrypt(body)["code"] == "C-1"


async def test_a_request_signed_by_the_sdk_is_accepted_and_the_sdk_verifies_the_answers(
    w: World,
) -> None:
    openid = f"o-{uuid.uuid4().hex[:16]}"
    paid = await w.control(
        "/control/payments",
        {"appid": APPID, "mchid": MCHID, "shop_number": "SHOP-009", "openid": openid,
         "amount": 100},
    )  # fmt: skip
    body = json.dumps(
        {"appid": APPID, "transaction_id": paid["transaction_id"], "openid": openid,
         "earn_points": True, "increased_points": 1,
         "points_update_time": "2026-11-26T10:00:00.120+08:00"}
    )  # fmt: skip
    sync_path = "/v3/businesscircle/points/notify"
    query_path = f"/v3/businesscircle/user-authorizations/{openid}?appid={APPID}"

    async def call(method: str, path: str, data: str | None) -> tuple[int, dict[str, str], str]:
        authorization = sdk.build_authorization(
            path, method, MCHID, w.merchant_serial, w.sdk_merchant_key, data=data
        )
        headers = {"Authorization": authorization, "Content-Type": "application/json"}
        async with w.http.request(method, w.sim.url + path, data=data, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.text()

    synced = await call("POST", sync_path, body)
    queried = await call("GET", query_path, None)

    assert synced[0] == 204
    assert sdk_verifies(w, synced[1], synced[2])
    assert queried[0] == 200
    assert sdk_verifies(w, queried[1], queried[2])
    assert json.loads(queried[2])["authorize_state"] == "UNAUTHORIZED"


def test_what_the_sdk_signs_our_library_verifies_and_the_other_way_round() -> None:
    key = signing.generate_private_key()
    sdk_key = sdk.load_private_key(signing.private_key_pem(key).decode())
    message = signing.response_message("1700000000", "NONCE", '{"a":"商圈"}')

    assert signing.verify(key.public_key(), message, sdk.rsa_sign(sdk_key, message))
    ours = signing.sign(key, message)
    sdk_public = sdk.load_public_key(signing.public_key_pem(key.public_key()).decode())
    assert sdk.rsa_verify("1700000000", "NONCE", '{"a":"商圈"}', ours, sdk_public)
