"""Platform → mall: notifications arrive signed, verifiable, decryptable, and are retried.

A real simulator on a free port delivers to a tiny aiohttp "mall" in this module that checks
every delivery with ``wechatpay.signing.verify`` and decrypts it with ``wechatpay.aead``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from wechatpay import aead, signing
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import Merchant, Settings

MCHID = "1900000109"
APPID = "wx5imnotif1cations"
APIV3_KEY = "0123456789abcdefghijABCDEFGHIJ01"
PLATFORM_SERIAL = "PUB_KEY_ID_0114232134912410000000000000"
ENVELOPE_FIELDS = {"id", "create_time", "event_type", "resource_type", "summary", "resource"}
RESOURCE_FIELDS = {"algorithm", "ciphertext", "associated_data", "nonce", "original_type"}
PAYMENT_FIELDS = {
    "mchid", "merchant_name", "shop_name", "shop_number", "appid", "openid", "time_end",
    "amount", "transaction_id",
}  # fmt: skip
REFUND_FIELDS = {
    "mchid", "merchant_name", "shop_name", "shop_number", "appid", "openid", "refund_time",
    "pay_amount", "refund_amount", "transaction_id", "refund_id",
}  # fmt: skip


@dataclass
class Received:
    headers: dict[str, str]
    body: str
    verified: bool
    envelope: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class Mall:
    """Verifies and decrypts what it receives; answers as scripted per transaction_id."""

    platform_key: signing.PublicKey
    received: list[Received] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        h = request.headers
        message = signing.response_message(
            h.get("Wechatpay-Timestamp", ""), h.get("Wechatpay-Nonce", ""), body
        )
        verified = h.get("Wechatpay-Serial") == PLATFORM_SERIAL and signing.verify(
            self.platform_key, message, h.get("Wechatpay-Signature", "")
        )
        envelope = json.loads(body)
        r = envelope["resource"]
        plain = aead.decrypt(APIV3_KEY, r["nonce"], r["associated_data"], r["ciphertext"])
        resource: dict[str, Any] = json.loads(plain)
        self.received.append(Received(dict(h), body, verified, envelope, resource))
        if not verified:
            return web.json_response({"code": "FAIL", "message": "bad signature"}, status=401)
        answers = self.script.get(str(resource.get("transaction_id") or resource["openid"]), [])
        status = answers.pop(0) if answers else 204
        if status in (200, 204):
            return web.Response(status=status)
        return web.json_response({"code": "FAIL", "message": "scripted"}, status=status)

    def about(self, key: str) -> list[Received]:
        return [
            r
            for r in self.received
            if key in (r.resource.get("transaction_id"), r.resource.get("openid"))
        ]


@dataclass
class World:
    sim: Running
    mall: Mall
    merchant_key: signing.PrivateKey
    http: aiohttp.ClientSession

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.sim.url + path, json=body) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str) -> dict[str, Any]:
        async with self.http.get(self.sim.url + path) as resp:
            assert resp.status == 200, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    async def pay(self, openid: str, amount: int = 8_800, **extra: Any) -> str:
        status, answer = await self.post(
            "/control/payments",
            {"appid": APPID, "mchid": MCHID, "shop_number": "SHOP-001", "openid": openid,
             "amount": amount, **extra},
        )  # fmt: skip
        assert status == 202, answer
        transaction_id: str = answer["transaction_id"]
        return transaction_id

    async def sync_points(self, transaction_id: str, openid: str) -> int:
        """The mall's points sync, signed as the merchant."""
        body = json.dumps(
            {"appid": APPID, "transaction_id": transaction_id, "openid": openid,
             "earn_points": True, "increased_points": 88,
             "points_update_time": "2026-11-26T10:00:00+08:00"}
        )  # fmt: skip
        path = "/v3/businesscircle/points/notify"
        merchant = self.sim.state.merchants[MCHID]
        auth = signing.authorize(
            mchid=MCHID,
            serial_no=merchant.serial_no or "",
            private_key=self.merchant_key,
            method="POST",
            path=path,
            body=body,
        )
        headers = {"Authorization": auth.header(), "Content-Type": "application/json"}
        async with self.http.post(self.sim.url + path, data=body, headers=headers) as resp:
            return resp.status

    async def notification(self, notification_id: str) -> dict[str, Any]:
        return await self.get(f"/control/notifications/{notification_id}")

    async def settled(self, notification_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The notification's record once it is no longer PENDING."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = await self.notification(notification_id)
            if record["status"] != "PENDING":
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"notification {notification_id} still pending")
            await asyncio.sleep(0.02)


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def mall_server(mall: Mall) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/wechatpay/notifications", mall.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/wechatpay/notifications"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def world(**options: Any) -> AsyncIterator[World]:
    platform_key = signing.generate_private_key()
    merchant_key = signing.generate_private_key()
    mall = Mall(platform_key.public_key())
    async with mall_server(mall) as notify_url, aiohttp.ClientSession() as http:
        merchant = Merchant(MCHID, APIV3_KEY, merchant_key.public_key(), notify_url=notify_url)
        settings = Settings.create(
            [merchant], platform_key=platform_key, platform_serial=PLATFORM_SERIAL, **options
        )
        async with serve(settings) as sim:
            yield World(sim, mall, merchant_key, http)


@pytest_asyncio.fixture(scope="module")
async def w() -> AsyncIterator[World]:
    async with world(retry_scale=0.001) as running:
        yield running


def shopper() -> str:
    return f"o-{uuid.uuid4().hex[:20]}"


async def test_a_payment_notification_arrives_signed_decryptable_with_the_platform_fields(
    w: World,
) -> None:
    openid = shopper()
    status, answer = await w.post(
        "/control/payments",
        {"appid": APPID, "mchid": MCHID, "shop_number": "SHOP-001", "shop_name": "Coffee Corner",
         "merchant_name": "Coffee Corner Ltd", "openid": openid, "amount": 12_345,
         "time_end": "2026-11-26T14:30:00+08:00"},
    )  # fmt: skip
    assert status == 202
    transaction_id = answer["transaction_id"]
    await eventually(lambda: len(w.mall.about(transaction_id)) == 1)

    got = w.mall.about(transaction_id)[0]
    assert got.verified
    assert got.headers["Wechatpay-Serial"] == PLATFORM_SERIAL
    assert got.headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    assert abs(int(got.headers["Wechatpay-Timestamp"]) - time.time()) < 60
    assert set(got.envelope) == ENVELOPE_FIELDS
    assert got.envelope["id"] == answer["notification_id"]
    assert got.envelope["event_type"] == "MALL_TRANSACTION.SUCCESS"
    assert got.envelope["resource_type"] == "encrypt-resource"
    assert datetime.fromisoformat(got.envelope["create_time"]).utcoffset() == timedelta(hours=8)
    assert set(got.envelope["resource"]) == RESOURCE_FIELDS
    assert got.envelope["resource"]["algorithm"] == "AEAD_AES_256_GCM"
    assert got.envelope["resource"]["original_type"] == "transaction"
    assert got.resource == {
        "mchid": MCHID,
        "merchant_name": "Coffee Corner Ltd",
        "shop_name": "Coffee Corner",
        "shop_number": "SHOP-001",
        "appid": APPID,
        "openid": openid,
        "time_end": "2026-11-26T14:30:00+08:00",
        "amount": 12_345,
        "transaction_id": transaction_id,
    }
    assert len(transaction_id) == 28
    assert transaction_id.isdigit()
    delivered = await w.settled(answer["notification_id"])
    assert delivered["status"] == "DELIVERED"
    assert delivered["attempts"] == 1
    assert delivered["last_answer"]["status"] == 204


async def test_the_resource_does_not_decrypt_with_another_apiv3_key(w: World) -> None:
    transaction_id = await w.pay(shopper())
    await eventually(lambda: len(w.mall.about(transaction_id)) == 1)
    r = w.mall.about(transaction_id)[0].envelope["resource"]

    with pytest.raises(aead.DecryptError):
        aead.decrypt("X" * 32, r["nonce"], r["associated_data"], r["ciphertext"])


async def test_a_mall_answering_500_twice_then_204_gets_three_freshly_signed_deliveries(
    w: World,
) -> None:
    transaction_id = f"4200{uuid.uuid4().int % 10**24:024d}"
    w.mall.script[transaction_id] = [500, 500, 204]

    status, answer = await w.post(
        "/control/payments",
        {"appid": APPID, "mchid": MCHID, "shop_number": "SHOP-002", "openid": shopper(),
         "amount": 100, "transaction_id": transaction_id},
    )  # fmt: skip
    assert status == 202
    await eventually(lambda: len(w.mall.about(transaction_id)) == 3)
    deliveries = w.mall.about(transaction_id)

    assert all(d.verified for d in deliveries)
    assert len({d.body for d in deliveries}) == 1  # the same notification, same id
    assert len({d.headers["Wechatpay-Nonce"] for d in deliveries}) == 3
    assert len({d.headers["Wechatpay-Signature"] for d in deliveries}) == 3
    record = await w.settled(answer["notification_id"])
    assert record["status"] == "DELIVERED"
    assert [a["status"] for a in record["attempt_log"]] == [500, 500, 204]
    await asyncio.sleep(0.1)
    assert len(w.mall.about(transaction_id)) == 3  # acknowledged: no more attempts


async def test_a_mall_that_never_acknowledges_gets_the_whole_schedule_then_a_give_up() -> None:
    async with world(retry_scale=0.00001) as w:
        openid = shopper()
        w.mall.script[openid] = [503] * 100
        status, answer = await w.post(
            "/control/authorizations",
            {"appid": APPID, "mchid": MCHID, "openid": openid, "auth_type": "REGISTERED_MODE"},
        )
        assert status == 202

        record = await w.settled(answer["notification_id"])
        assert record["status"] == "FAILED"
        assert record["attempts"] == 16  # the first attempt and 15 retries
        assert len(w.mall.about(openid)) == 16


async def test_a_refund_is_refused_before_points_are_synced_and_delivered_after(w: World) -> None:
    openid = shopper()
    transaction_id = await w.pay(openid, amount=5_000)

    status, answer = await w.post(
        "/control/refunds", {"transaction_id": transaction_id, "refund_amount": 1_000}
    )
    assert status == 409
    assert answer["code"] == "POINTS_NOT_SYNCED"

    assert await w.sync_points(transaction_id, openid) == 204
    status, answer = await w.post(
        "/control/refunds",
        {"transaction_id": transaction_id, "refund_amount": 1_000, "refund_id": "refund-1"},
    )
    assert status == 202
    assert answer["refund_id"] == "refund-1"

    def refunds() -> list[Received]:
        return [
            r
            for r in w.mall.about(transaction_id)
            if r.envelope["event_type"] == "MALL_REFUND.SUCCESS"
        ]

    await eventually(lambda: len(refunds()) == 1)
    got = refunds()[0]
    assert got.verified
    assert got.envelope["resource"]["original_type"] == "refund"
    assert set(got.resource) == REFUND_FIELDS
    assert got.resource["pay_amount"] == 5_000
    assert got.resource["refund_amount"] == 1_000
    assert got.resource["refund_id"] == "refund-1"
    assert got.resource["openid"] == openid
    assert datetime.fromisoformat(got.resource["refund_time"]).utcoffset() == timedelta(hours=8)


async def test_refunds_never_exceed_the_payment(w: World) -> None:
    openid = shopper()
    transaction_id = await w.pay(openid, amount=300)
    assert await w.sync_points(transaction_id, openid) == 204

    first, _ = await w.post(
        "/control/refunds", {"transaction_id": transaction_id, "refund_amount": 200}
    )
    second, answer = await w.post(
        "/control/refunds", {"transaction_id": transaction_id, "refund_amount": 101}
    )

    assert first == 202
    assert second == 400
    assert answer["code"] == "PARAM_ERROR"


async def test_refunds_of_unknown_payments_are_not_found(w: World) -> None:
    status, answer = await w.post(
        "/control/refunds", {"transaction_id": "4200000000000000000000000000", "refund_amount": 1}
    )
    assert status == 404
    assert answer["code"] == "RESOURCE_NOT_EXISTS"


async def test_the_refund_rule_can_be_switched_off() -> None:
    async with world(require_synced_points_for_refund=False) as w:
        transaction_id = await w.pay(shopper(), amount=700)
        status, _ = await w.post(
            "/control/refunds", {"transaction_id": transaction_id, "refund_amount": 700}
        )
        assert status == 202


async def test_an_authorization_notification_carries_the_member_card(w: World) -> None:
    openid = shopper()
    status, _ = await w.post(
        "/control/authorizations",
        {"appid": APPID, "mchid": MCHID, "openid": openid, "code": "CARD-0001",
         "auth_type": "REGISTERED_AND_AUTHORIZATION_MODE"},
    )  # fmt: skip
    assert status == 202

    await eventually(lambda: len(w.mall.about(openid)) == 1)
    got = w.mall.about(openid)[0]
    assert got.verified
    assert got.envelope["event_type"] == "MALL_AUTH.ACTIVATE_CARD"
    assert got.resource == {
        "openid": openid,
        "appid": APPID,
        "mchid": MCHID,
        "code": "CARD-0001",
        "auth_type": "REGISTERED_AND_AUTHORIZATION_MODE",
    }


async def test_a_redelivery_sends_the_same_notification_again_freshly_signed(w: World) -> None:
    transaction_id = await w.pay(shopper())
    await eventually(lambda: len(w.mall.about(transaction_id)) == 1)
    notification_id = w.mall.about(transaction_id)[0].envelope["id"]

    status, _ = await w.post(f"/control/notifications/{notification_id}/redeliver", {})

    assert status == 202
    await eventually(lambda: len(w.mall.about(transaction_id)) == 2)
    first, second = w.mall.about(transaction_id)
    assert second.verified
    assert first.body == second.body
    assert first.headers["Wechatpay-Signature"] != second.headers["Wechatpay-Signature"]


async def test_a_signature_probe_cannot_verify_and_a_refusal_is_what_it_expects(w: World) -> None:
    status, answer = await w.post("/control/probes", {"mchid": MCHID})
    assert status == 202

    await eventually(
        lambda: any(r.envelope["id"] == answer["notification_id"] for r in w.mall.received)
    )
    got = next(r for r in w.mall.received if r.envelope["id"] == answer["notification_id"])
    assert got.headers["Wechatpay-Signature"].startswith("WECHATPAY/SIGNTEST/")
    assert not got.verified
    record = await w.settled(answer["notification_id"])
    assert record["probe"] is True
    assert record["status"] == "DELIVERED"  # refused, as it must be
    assert record["attempts"] == 1


async def test_notifications_are_listed_with_their_status(w: World) -> None:
    status, answer = await w.post(
        "/control/payments",
        {"appid": APPID, "mchid": MCHID, "shop_number": "S", "openid": shopper(), "amount": 1},
    )
    assert status == 202
    transaction_id = answer["transaction_id"]
    await w.settled(answer["notification_id"])

    listed = await w.get(f"/control/notifications?transaction_id={transaction_id}")

    (only,) = listed["notifications"]
    assert only["event_type"] == "MALL_TRANSACTION.SUCCESS"
    assert only["status"] == "DELIVERED"
    assert only["attempts"] == 1
    assert only["last_answer"]["status"] == 204


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": "12"}, "amount"),
        ({"mchid": "1999999999"}, "mchid"),
        ({"openid": ""}, "openid"),
        ({"time_end": "2026-11-26T14:30:00"}, "time_end"),
        ({"shop_number": None}, "shop_number"),
    ],
)
async def test_control_payments_refuse_bad_input(
    w: World, change: dict[str, Any], field: str
) -> None:
    body = {"appid": APPID, "mchid": MCHID, "shop_number": "S", "openid": "o-x", "amount": 1}
    status, answer = await w.post("/control/payments", {**body, **change})

    assert status == 400
    assert answer["code"] == "PARAM_ERROR"
    assert field in answer["message"]


async def test_a_transaction_is_notified_once(w: World) -> None:
    transaction_id = await w.pay(shopper())
    status, answer = await w.post(
        "/control/payments",
        {"appid": APPID, "mchid": MCHID, "shop_number": "S", "openid": "o-x", "amount": 1,
         "transaction_id": transaction_id},
    )  # fmt: skip
    assert status == 409
    assert answer["code"] == "DUPLICATE_TRANSACTION"
