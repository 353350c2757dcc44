"""Mall → platform: points sync and the smart-mall queries, merchant-signed requests verified,
every answer signed by the platform and checked here with ``wechatpay.signing.verify``.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from wechatpay import signing
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import Merchant, Settings
from yarl import URL

MCHID = "1900000109"
OTHER_MCHID = "1900000110"
APPID = "wx5implatformapi0"
BRANDID = "1000"
PLATFORM_SERIAL = "PUB_KEY_ID_0114232134912410000000000000"
POINTS = "/v3/businesscircle/points/notify"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str
    signed: bool  # the platform's signature over the answer verifies

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.text)
        return data


@dataclass
class World:
    sim: Running
    http: aiohttp.ClientSession
    platform_key: signing.PublicKey
    merchant_key: signing.PrivateKey
    merchant_serial: str

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        key: signing.PrivateKey | None = None,
        mchid: str = MCHID,
        serial_no: str | None = None,
        timestamp: int | None = None,
        authorization: str | None = None,
    ) -> Answer:
        text = json.dumps(body) if body is not None else ""
        auth = signing.authorize(
            mchid=mchid,
            serial_no=serial_no or self.merchant_serial,
            private_key=key or self.merchant_key,
            method=method,
            path=path,
            body=text,
            timestamp=timestamp,
        )
        headers = {
            "Authorization": authorization if authorization is not None else auth.header(),
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        url = URL(self.sim.url + path, encoded=True)
        async with self.http.request(method, url, data=text or None, headers=headers) as resp:
            answer_text = await resp.text()
            h = resp.headers
            message = signing.response_message(
                h.get("Wechatpay-Timestamp", ""), h.get("Wechatpay-Nonce", ""), answer_text
            )
            signed = h.get("Wechatpay-Serial") == PLATFORM_SERIAL and signing.verify(
                self.platform_key, message, h.get("Wechatpay-Signature", "")
            )
            return Answer(resp.status, dict(h), answer_text, signed)

    async def control(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with self.http.request(method, self.sim.url + path, json=body) as resp:
            assert resp.status < 300, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    async def pay(self, openid: str, mchid: str = MCHID) -> str:
        answer = await self.control(
            "POST",
            "/control/payments",
            {"appid": APPID, "mchid": mchid, "shop_number": "SHOP-001", "openid": openid,
             "amount": 2_000},
        )  # fmt: skip
        transaction_id: str = answer["transaction_id"]
        return transaction_id


def sync(transaction_id: str, openid: str, /, **change: Any) -> dict[str, Any]:
    body = {
        "appid": APPID,
        "transaction_id": transaction_id,
        "openid": openid,
        "earn_points": True,
        "increased_points": 20,
        "points_update_time": "2026-11-26T10:00:00+08:00",
        "total_points": 1_020,
    }
    body.update(change)
    return {k: v for k, v in body.items() if v is not None}


@contextlib.asynccontextmanager
async def sink() -> AsyncIterator[str]:
    """A mall that acknowledges every notification (this module tests the other direction)."""

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/notify", ok)
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
    platform_key = signing.generate_private_key()
    merchant_key = signing.generate_private_key()
    async with sink() as url, aiohttp.ClientSession() as http:
        merchants = [
            Merchant(MCHID, public_key=merchant_key.public_key(), notify_url=url),
            Merchant(OTHER_MCHID, public_key=signing.generate_private_key().public_key(),
                     notify_url=url),
        ]  # fmt: skip
        settings = Settings.create(
            merchants, platform_key=platform_key, platform_serial=PLATFORM_SERIAL
        )
        async with serve(settings) as sim:
            serial = sim.state.merchants[MCHID].serial_no
            assert serial is not None
            yield World(sim, http, platform_key.public_key(), merchant_key, serial)


def shopper() -> str:
    return f"o-{uuid.uuid4().hex[:20]}"


async def syncs_of(w: World, transaction_id: str) -> list[dict[str, Any]]:
    listed = await w.control("GET", f"/control/points-syncs?transaction_id={transaction_id}")
    found: list[dict[str, Any]] = listed["points_syncs"]
    return found


async def test_a_signed_points_sync_is_accepted_with_a_signed_204_and_recorded(w: World) -> None:
    openid = shopper()
    transaction_id = await w.pay(openid)
    body = sync(transaction_id, openid)

    answer = await w.call("POST", POINTS, body)

    assert answer.status == 204
    assert answer.text == ""
    assert answer.signed
    assert answer.headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    (recorded,) = await syncs_of(w, transaction_id)
    assert recorded["verified"] is True
    assert recorded["status"] == 204
    assert recorded["mchid"] == MCHID
    assert recorded["body"] == body


async def test_the_same_transaction_synced_twice_is_recorded_twice_and_accepted_twice(
    w: World,
) -> None:
    openid = shopper()
    transaction_id = await w.pay(openid)

    first = await w.call("POST", POINTS, sync(transaction_id, openid))
    second = await w.call("POST", POINTS, sync(transaction_id, openid))

    assert (first.status, second.status) == (204, 204)
    assert [s["status"] for s in await syncs_of(w, transaction_id)] == [204, 204]


async def test_no_points_is_a_valid_report_when_it_says_why(w: World) -> None:
    openid = shopper()
    transaction_id = await w.pay(openid)

    answer = await w.call(
        "POST",
        POINTS,
        sync(transaction_id, openid, earn_points=False, increased_points=0,
             no_points_remarks="store does not take part"),
    )  # fmt: skip

    assert answer.status == 204


@pytest.mark.parametrize(
    "spoil",
    ["bad_signature", "stale_timestamp", "future_timestamp", "unknown_mchid", "wrong_serial",
     "no_authorization", "other_schema", "signature_probe", "merchant_of_another_key"],
)  # fmt: skip
async def test_requests_that_do_not_verify_are_sign_errors(w: World, spoil: str) -> None:
    openid = shopper()
    transaction_id = await w.pay(openid)
    body = sync(transaction_id, openid)
    stranger = signing.generate_private_key()
    now = int(time.time())
    probe = signing.authorize(
        mchid=MCHID, serial_no=w.merchant_serial, private_key=w.merchant_key,
        method="POST", path=POINTS, body=json.dumps(body),
    )  # fmt: skip
    probe_header = probe.header().replace(probe.signature, "WECHATPAY/SIGNTEST/" + probe.signature)
    spoilers: dict[str, dict[str, Any]] = {
        "bad_signature": {"key": stranger},
        "stale_timestamp": {"timestamp": now - 301},
        "future_timestamp": {"timestamp": now + 600},
        "unknown_mchid": {"mchid": "1234567890"},
        "wrong_serial": {"serial_no": "0" * 40},
        "no_authorization": {"authorization": ""},
        "other_schema": {"authorization": "Bearer abc"},
        "signature_probe": {"authorization": probe_header},
        "merchant_of_another_key": {"mchid": OTHER_MCHID},
    }
    kwargs = spoilers[spoil]

    answer = await w.call("POST", POINTS, body, **kwargs)

    assert answer.status == 401
    assert answer.json()["code"] == "SIGN_ERROR"
    assert answer.json()["message"]
    assert answer.signed  # refusals are signed too
    assert await syncs_of(w, transaction_id) == []


async def test_a_signature_over_another_body_does_not_verify(w: World) -> None:
    openid = shopper()
    transaction_id = await w.pay(openid)
    signed_for = signing.authorize(
        mchid=MCHID, serial_no=w.merchant_serial, private_key=w.merchant_key, method="POST",
        path=POINTS, body=json.dumps(sync(transaction_id, openid, increased_points=1)),
    )  # fmt: skip

    answer = await w.call(
        "POST", POINTS, sync(transaction_id, openid, increased_points=9_999),
        authorization=signed_for.header(),
    )  # fmt: skip

    assert answer.status == 401


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"points_update_time": "2026-11-26T10:00:00"}, "points_update_time"),
        ({"points_update_time": "2026-11-26 10:00:00+08:00"}, "points_update_time"),
        ({"points_update_time": "yesterday"}, "points_update_time"),
        ({"earn_points": False, "increased_points": 0}, "no_points_remarks"),
        ({"earn_points": "true"}, "earn_points"),
        ({"earn_points": None}, "earn_points"),
        ({"increased_points": -1}, "increased_points"),
        ({"increased_points": 1.5}, "increased_points"),
        ({"increased_points": True}, "increased_points"),
        ({"total_points": -5}, "total_points"),
        ({"openid": None}, "openid"),
        ({"appid": None}, "appid"),
        ({"appid": "wx-not-the-payments"}, "appid"),
        ({"openid": "o-not-the-shopper"}, "openid"),
        ({"transaction_id": "4200000000000000000000000000"}, "transaction_id"),
    ],
)
async def test_points_syncs_with_bad_fields_are_param_errors(
    w: World, change: dict[str, Any], field: str
) -> None:
    openid = shopper()
    transaction_id = await w.pay(openid)

    answer = await w.call("POST", POINTS, sync(transaction_id, openid, **change))

    assert answer.status == 400
    assert answer.json()["code"] == "PARAM_ERROR"
    assert field in answer.json()["message"]
    assert answer.signed


async def test_a_payment_notified_to_another_merchant_cannot_be_synced(w: World) -> None:
    openid = shopper()
    transaction_id = await w.pay(openid, mchid=OTHER_MCHID)

    answer = await w.call("POST", POINTS, sync(transaction_id, openid))

    assert answer.status == 400
    assert answer.json()["code"] == "PARAM_ERROR"


async def test_injected_faults_fail_the_next_calls_then_the_sync_goes_through(w: World) -> None:
    openid = shopper()
    transaction_id = await w.pay(openid)
    await w.control("POST", "/control/faults", {"points_notify": {"fail_next": 2, "status": 500}})
    try:
        answers = [await w.call("POST", POINTS, sync(transaction_id, openid)) for _ in range(3)]
    finally:
        await w.control("DELETE", "/control/faults")

    assert [a.status for a in answers] == [500, 500, 204]
    assert answers[0].json()["code"] == "SYSTEM_ERROR"
    assert all(a.signed for a in answers)
    assert [s["status"] for s in await syncs_of(w, transaction_id)] == [500, 500, 204]


async def test_the_authorization_query_reflects_the_authorizations_sent(w: World) -> None:
    openid = shopper()
    path = f"/v3/businesscircle/user-authorizations/{openid}?appid={APPID}"

    before = await w.call("GET", path)
    await w.control(
        "POST",
        "/control/authorizations",
        {"appid": APPID, "mchid": MCHID, "openid": openid, "auth_type": "REGISTERED_MODE"},
    )
    after = await w.call("GET", path)
    await w.control(
        "POST", "/control/deauthorizations", {"appid": APPID, "mchid": MCHID, "openid": openid}
    )
    withdrawn = await w.call("GET", path)

    assert before.status == 200
    assert before.signed
    assert before.json() == {"openid": openid, "appid": APPID, "authorize_state": "UNAUTHORIZED"}
    assert after.signed
    assert after.json()["authorize_state"] == "AUTHORIZED"
    assert after.json()["authorize_time"].endswith("+08:00")
    assert "deauthorize_time" not in after.json()
    assert withdrawn.json()["authorize_state"] == "DEAUTHORIZED"
    assert withdrawn.json()["deauthorize_time"].endswith("+08:00")


async def test_the_authorization_query_needs_an_appid(w: World) -> None:
    answer = await w.call("GET", f"/v3/businesscircle/user-authorizations/{shopper()}")

    assert answer.status == 400
    assert answer.json()["code"] == "PARAM_ERROR"


async def test_commit_status_is_pending_until_every_payment_has_its_points(w: World) -> None:
    openid = shopper()
    path = f"/v3/businesscircle/users/{openid}/points/commit_status?brandid={BRANDID}&appid={APPID}"
    nothing_yet = await w.call("GET", path)
    first = await w.pay(openid)
    second = await w.pay(openid)

    pending = await w.call("GET", path)
    await w.call("POST", POINTS, sync(first, openid))
    still_pending = await w.call("GET", path)
    await w.call("POST", POINTS, sync(second, openid))
    finished = await w.call("GET", path)

    assert nothing_yet.json()["commit_status"] == "FINISHED"
    assert pending.signed
    assert pending.json() == {
        "openid": openid,
        "appid": APPID,
        "brandid": 1000,
        "commit_status": "PENDING",
    }
    assert still_pending.json()["commit_status"] == "PENDING"
    assert finished.json()["commit_status"] == "FINISHED"


async def test_commit_status_needs_brandid_and_appid(w: World) -> None:
    base = f"/v3/businesscircle/users/{shopper()}/points/commit_status"

    no_brand = await w.call("GET", f"{base}?appid={APPID}")
    no_app = await w.call("GET", f"{base}?brandid={BRANDID}")

    assert (no_brand.status, no_app.status) == (400, 400)


async def test_an_unknown_platform_path_is_a_signed_not_found(w: World) -> None:
    answer = await w.call("GET", "/v3/businesscircle/nowhere")

    assert answer.status == 404
    assert answer.signed


async def test_a_merchant_registered_at_runtime_can_call(w: World) -> None:
    key = signing.generate_private_key()
    pem = signing.public_key_pem(key.public_key()).decode()
    mchid = f"19{uuid.uuid4().int % 10**8:08d}"

    registered = await w.control("PUT", f"/control/merchants/{mchid}", {"public_key_pem": pem})
    openid = shopper()
    path = f"/v3/businesscircle/user-authorizations/{openid}?appid={APPID}"
    answer = await w.call("GET", path, key=key, mchid=mchid, serial_no=registered["serial_no"])

    assert len(registered["apiv3_key"]) == 32
    assert answer.status == 200
    assert answer.signed


async def test_the_platform_tells_its_key(w: World) -> None:
    info = await w.control("GET", "/control/platform")

    assert info["platform_serial"] == PLATFORM_SERIAL
    published = signing.load_public_key(info["platform_public_key_pem"].encode())
    assert published.public_numbers() == w.platform_key.public_numbers()
