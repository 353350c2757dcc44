"""The API v3 client against a real aiohttp server that plays the platform.

The fake platform checks every request's merchant signature with ``wechatpay.signing`` and
the merchant's public key, and signs its answers with one of two platform keys (a rotation in
progress), or signs them wrongly when a test asks it to. Keys are generated per session.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from wechatpay import signing
from wechatpay.client import (
    PlatformRefused,
    PlatformUnavailable,
    ResponseNotVerified,
    WeChatPayClient,
    rfc3339,
)
from wechatpayv3 import utils as sdk  # type: ignore[import-untyped]

MCHID = "1900000001"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
OLD_KEY = "PUB_KEY_ID_0111000000000000000000000000000001"  # a public key id
NEW_KEY = "3775B6A45ACD588826D15E583A95F5DD"  # a certificate serial
NOTIFY = "/v3/businesscircle/points/notify"
SHANGHAI = timezone(timedelta(hours=8))
AUTH_HEADER = re.compile(
    r'^WECHATPAY2-SHA256-RSA2048 mchid="(?P<mchid>\d+)",nonce_str="(?P<nonce>[0-9A-F]{32})",'
    r'signature="(?P<signature>[A-Za-z0-9+/=]+)",timestamp="(?P<timestamp>\d+)",'
    r'serial_no="(?P<serial>[0-9A-F]+)"$'
)


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class Keys:
    merchant: rsa.RSAPrivateKey
    platform: dict[str, rsa.RSAPrivateKey]
    stranger: rsa.RSAPrivateKey


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(new_key(), {OLD_KEY: new_key(), NEW_KEY: new_key()}, new_key())


@dataclass
class Answer:
    """What the fake platform answers next. ``signer``: a platform serial, or a way to fail."""

    status: int = 204
    body: Any = None  # a dict (JSON), raw bytes, or None for an empty body
    signer: str = OLD_KEY  # or "none", "stranger", "unknown", "stale", "tampered", "probe"
    delay_s: float = 0.0


@dataclass
class Received:
    method: str
    raw_path: str
    body: str
    authorization: str


@dataclass
class FakePlatform:
    keys: Keys
    answers: list[Answer] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def signed(self, request: web.Request, body: str) -> bool:
        auth = signing.parse_authorization(request.headers.get("Authorization", ""))
        if auth is None or (auth.mchid, auth.serial_no) != (MCHID, MERCHANT_SERIAL):
            return False
        message = signing.request_message(
            request.method, request.raw_path, auth.timestamp, auth.nonce_str, body
        )
        return signing.verify(self.keys.merchant.public_key(), message, auth.signature)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        if not self.signed(request, body):
            return self.respond(Answer(401, {"code": "SIGN_ERROR", "message": "签名错误"}))
        self.received.append(
            Received(request.method, request.raw_path, body, request.headers["Authorization"])
        )
        answer = self.answers.pop(0) if self.answers else Answer()
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        return self.respond(answer)

    def respond(self, answer: Answer) -> web.Response:
        if isinstance(answer.body, bytes):
            text = answer.body.decode()
        elif answer.body is None:
            text = ""
        else:
            text = json.dumps(answer.body, ensure_ascii=False)
        timestamp, nonce = str(int(time.time())), signing.nonce()
        serial, key = OLD_KEY, self.keys.platform[OLD_KEY]
        if answer.signer in self.keys.platform:
            serial, key = answer.signer, self.keys.platform[answer.signer]
        elif answer.signer == "stranger":
            key = self.keys.stranger
        elif answer.signer == "unknown":
            serial = "PUB_KEY_ID_9999"
        elif answer.signer == "stale":
            timestamp = str(int(time.time()) - 3600)
        signature = signing.sign(key, signing.response_message(timestamp, nonce, text))
        if answer.signer == "tampered":  # what was signed is not what arrives
            if text:
                text = text.replace("AUTHORIZED", "DEAUTHORIZED") + " "
            else:
                nonce += "0"
        if answer.signer == "probe":
            signature = "WECHATPAY/SIGNTEST/" + signature
        headers = {
            "Wechatpay-Serial": serial,
            "Wechatpay-Signature": signature,
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        }
        if answer.signer == "none":
            headers = {}
        content_type = "application/json" if text else None
        return web.Response(
            status=answer.status, text=text or None, headers=headers, content_type=content_type
        )


async def serve(handler: Any, prefix: str = "") -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", prefix + "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}{prefix}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def platform(keys: Keys) -> AsyncIterator[FakePlatform]:
    fake = FakePlatform(keys)
    async for url in serve(fake.handle):
        fake.url = url
        yield fake


def make_client(keys: Keys, url: str, **overrides: Any) -> WeChatPayClient:
    options: dict[str, Any] = {
        "base_url": url,
        "mchid": MCHID,
        "serial_no": MERCHANT_SERIAL,
        "private_key": keys.merchant,
        "platform_keys": {s: k.public_key() for s, k in keys.platform.items()},
        "timeout_s": 5.0,
    } | overrides
    return WeChatPayClient(**options)


@pytest.fixture
async def client(keys: Keys, platform: FakePlatform) -> AsyncIterator[WeChatPayClient]:
    async with make_client(keys, platform.url) as c:
        yield c


async def notify(client: WeChatPayClient, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "appid": "wx1234567890abcdef",
        "transaction_id": "4200000001202511260000000001",
        "openid": "oWmnN4xxxxxxxxxxe92NHIGf1xd8",
        "earn_points": True,
        "increased_points": 123,
        "points_update_time": datetime(2025, 11, 26, 14, 30, tzinfo=SHANGHAI),
        "total_points": 888,
    } | overrides
    await client.notify_points(**fields)


# -- what the merchant sends ---------------------------------------------------------------


async def test_a_request_carries_the_merchant_authorization(
    client: WeChatPayClient, platform: FakePlatform, keys: Keys
) -> None:
    before = int(time.time())

    await notify(client)
    await notify(client)

    first, second = platform.received
    match = AUTH_HEADER.fullmatch(first.authorization)
    assert match, first.authorization
    assert (match["mchid"], match["serial"]) == (MCHID, MERCHANT_SERIAL)
    assert before - 1 <= int(match["timestamp"]) <= time.time() + 1
    # The signature covers exactly what was sent: method, path, timestamp, nonce and body.
    message = f"POST\n{NOTIFY}\n{match['timestamp']}\n{match['nonce']}\n{first.body}\n"
    assert signing.verify(keys.merchant.public_key(), message, match["signature"])
    second_match = AUTH_HEADER.fullmatch(second.authorization)
    assert second_match
    assert second_match["nonce"] != match["nonce"]


async def test_points_sync_sends_the_platform_fields(
    client: WeChatPayClient, platform: FakePlatform
) -> None:
    await notify(client, sub_mchid="1234567890")

    [call] = platform.received
    assert (call.method, call.raw_path) == ("POST", NOTIFY)
    assert json.loads(call.body) == {
        "sub_mchid": "1234567890",
        "transaction_id": "4200000001202511260000000001",
        "appid": "wx1234567890abcdef",
        "openid": "oWmnN4xxxxxxxxxxe92NHIGf1xd8",
        "earn_points": True,
        "increased_points": 123,
        "points_update_time": "2025-11-26T14:30:00+08:00",
        "total_points": 888,
    }


async def test_a_no_points_report_is_sent_with_its_reason(
    client: WeChatPayClient, platform: FakePlatform
) -> None:
    await notify(client, earn_points=False, increased_points=0, no_points_remarks="金额不足1元")

    [call] = platform.received
    body = json.loads(call.body)
    assert (body["earn_points"], body["increased_points"]) == (False, 0)
    assert body["no_points_remarks"] == "金额不足1元"
    assert "金额不足1元" in call.body  # UTF-8 on the wire, signed as such
    assert "sub_mchid" not in body


@pytest.mark.parametrize(
    "overrides",
    [
        {"earn_points": False, "increased_points": 0},  # no reason given
        {"earn_points": True, "increased_points": 0},
        {"points_update_time": datetime(2025, 11, 26, 14, 30)},  # no offset
    ],
)
async def test_a_report_the_platform_would_refuse_is_not_sent(
    client: WeChatPayClient, platform: FakePlatform, overrides: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=r"remarks|increased_points|offset"):
        await notify(client, **overrides)

    assert platform.received == []


def test_times_are_rfc3339_with_the_offset_of_the_zone_given() -> None:
    moment = datetime(2025, 11, 26, 6, 30, 15, 999_000, tzinfo=UTC)

    assert rfc3339(moment.astimezone(SHANGHAI)) == "2025-11-26T14:30:15+08:00"
    assert rfc3339(moment) == "2025-11-26T06:30:15+00:00"


async def test_queries_sign_their_path_with_the_query(
    client: WeChatPayClient, platform: FakePlatform
) -> None:
    platform.answers = [
        Answer(200, {"openid": "o/x y", "authorize_state": "AUTHORIZED"}, signer=NEW_KEY),
        Answer(200, {"openid": "o/x y", "authorize_state": "AUTHORIZED"}),
        Answer(200, {"pending_status": "FINISHED"}),
    ]

    plain = await client.user_authorization("o/x y", "wxappid")
    with_sub = await client.user_authorization("o/x y", "wxappid", sub_mchid="1234567890")
    status = await client.points_commit_status("o/x y", "1000", "wxappid")

    assert plain["authorize_state"] == with_sub["authorize_state"] == "AUTHORIZED"
    assert status == {"pending_status": "FINISHED"}
    assert [(c.method, c.raw_path, c.body) for c in platform.received] == [
        ("GET", "/v3/businesscircle/user-authorizations/o%2Fx%20y?appid=wxappid", ""),
        (
            "GET",
            "/v3/businesscircle/user-authorizations/o%2Fx%20y?appid=wxappid&sub_mchid=1234567890",
            "",
        ),
        (
            "GET",
            "/v3/businesscircle/users/o%2Fx%20y/points/commit_status?brandid=1000&appid=wxappid",
            "",
        ),
    ]


async def test_a_base_url_with_a_path_prefix_is_part_of_what_is_signed(keys: Keys) -> None:
    fake = FakePlatform(keys)
    async for url in serve(fake.handle, prefix="/wechat"):
        async with make_client(keys, url) as client:
            await notify(client)

    [call] = fake.received
    assert call.raw_path == "/wechat" + NOTIFY


# -- what the platform answers ---------------------------------------------------------------


async def test_answers_signed_by_either_platform_key_are_accepted(
    client: WeChatPayClient, platform: FakePlatform
) -> None:
    platform.answers = [Answer(204, signer=OLD_KEY), Answer(204, signer=NEW_KEY)]

    assert await client.request("POST", NOTIFY, {"transaction_id": "t"}) == (204, None)
    assert await client.request("POST", NOTIFY, {"transaction_id": "t"}) == (204, None)


@pytest.mark.parametrize(
    ("signer", "reason"),
    [
        ("none", "missing_signature_headers"),
        ("stranger", "bad_signature"),
        ("unknown", "unknown_serial"),
        ("stale", "stale_timestamp"),
        ("tampered", "bad_signature"),
        ("probe", "bad_signature"),
    ],
)
@pytest.mark.parametrize("status", [200, 204, 400])
async def test_an_answer_that_does_not_verify_is_not_trusted(
    client: WeChatPayClient, platform: FakePlatform, signer: str, reason: str, status: int
) -> None:
    body = None if status == 204 else {"authorize_state": "AUTHORIZED", "code": "PARAM_ERROR"}
    platform.answers = [Answer(status, body, signer=signer)]

    with pytest.raises(ResponseNotVerified, match=reason) as caught:
        await client.request("POST", NOTIFY, {"transaction_id": "t"})

    # Not trusted means not known to be delivered: a transient failure, retried by callers.
    assert isinstance(caught.value, PlatformUnavailable)


async def test_only_keys_the_client_was_given_verify(keys: Keys, platform: FakePlatform) -> None:
    """After rotation, an answer signed with the retired key no longer verifies."""
    platform.answers = [Answer(204, signer=OLD_KEY), Answer(204, signer=NEW_KEY)]
    new_only = {NEW_KEY: keys.platform[NEW_KEY].public_key()}

    async with make_client(keys, platform.url, platform_keys=new_only) as client:
        with pytest.raises(ResponseNotVerified, match="unknown_serial"):
            await client.request("POST", NOTIFY, {})
        assert await client.request("POST", NOTIFY, {}) == (204, None)


async def test_answers_signed_by_the_reference_sdk_verify(keys: Keys) -> None:
    """Cross-check with the ``wechatpayv3`` SDK's own crypto helpers (not its call wrappers)."""
    platform_key = keys.platform[NEW_KEY]
    seen: list[str] = []

    async def sdk_platform(request: web.Request) -> web.Response:
        seen.append(request.headers["Authorization"])
        text = json.dumps({"openid": "o-1", "authorize_state": "AUTHORIZED"})
        timestamp, nonce = str(int(time.time())), "NONCE123"
        signature = sdk.rsa_sign(platform_key, f"{timestamp}\n{nonce}\n{text}\n")
        headers = {
            "Wechatpay-Serial": NEW_KEY,
            "Wechatpay-Signature": signature,
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
        }
        return web.Response(status=200, text=text, headers=headers)

    async for url in serve(sdk_platform):
        async with make_client(keys, url) as client:
            answer = await client.user_authorization("o-1", "wxappid")

    assert answer["authorize_state"] == "AUTHORIZED"
    # And the SDK's own authorisation builder produces what our header parser reads.
    theirs = sdk.build_authorization(
        "/v3/x", "GET", MCHID, MERCHANT_SERIAL, keys.merchant, nonce_str="N" * 32
    )
    parsed = signing.parse_authorization(theirs)
    assert parsed is not None
    assert (parsed.mchid, parsed.serial_no, parsed.nonce_str) == (MCHID, MERCHANT_SERIAL, "N" * 32)
    ours = signing.parse_authorization(seen[0])
    assert ours is not None
    assert ours.mchid == MCHID


# -- error classification --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "PARAM_ERROR"), (403, "NO_AUTH"), (404, "RESOURCE_NOT_EXISTS"), (409, "")],
)
async def test_a_verified_4xx_is_a_permanent_refusal_with_its_code(
    client: WeChatPayClient, platform: FakePlatform, status: int, code: str
) -> None:
    body = {"code": code, "message": "积分同步失败"} if code else b"not json"
    platform.answers = [Answer(status, body)]

    with pytest.raises(PlatformRefused) as caught:
        await notify(client)

    assert caught.value.status == status
    assert caught.value.code == (code or f"HTTP_{status}")


@pytest.mark.parametrize("signer", [OLD_KEY, "none"])
@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_5xx_and_429_are_transient_signed_or_not(
    client: WeChatPayClient, platform: FakePlatform, status: int, signer: str
) -> None:
    platform.answers = [Answer(status, {"code": "SYSTEM_ERROR", "message": "系统错误"}, signer)]

    with pytest.raises(PlatformUnavailable) as caught:
        await notify(client)

    assert caught.value.status == status
    assert caught.value.code == "SYSTEM_ERROR"
    assert not isinstance(caught.value, ResponseNotVerified)


async def test_a_redirect_is_not_followed_and_is_transient(
    client: WeChatPayClient, platform: FakePlatform
) -> None:
    platform.answers = [Answer(302, None)]

    with pytest.raises(PlatformUnavailable, match="unexpected status 302"):
        await notify(client)

    assert len(platform.received) == 1


async def test_a_verified_2xx_with_malformed_json_is_transient(
    client: WeChatPayClient, platform: FakePlatform
) -> None:
    platform.answers = [Answer(200, b"{not json")]

    with pytest.raises(PlatformUnavailable, match="malformed JSON"):
        await client.user_authorization("o-1", "wxappid")


async def test_a_timeout_is_transient(keys: Keys, platform: FakePlatform) -> None:
    platform.answers = [Answer(204, delay_s=1.0)]

    async with make_client(keys, platform.url, timeout_s=0.2) as client:
        with pytest.raises(PlatformUnavailable, match="Timeout"):
            await notify(client)


async def test_an_unreachable_platform_is_transient(keys: Keys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the call: nobody listens there

    async with make_client(keys, f"http://127.0.0.1:{port}") as client:
        with pytest.raises(PlatformUnavailable):
            await notify(client)


async def test_a_request_our_key_did_not_sign_is_refused_by_the_platform(
    keys: Keys, platform: FakePlatform
) -> None:
    async with make_client(keys, platform.url, private_key=keys.stranger) as client:
        with pytest.raises(PlatformRefused) as caught:
            await notify(client)

    assert (caught.value.status, caught.value.code) == (401, "SIGN_ERROR")
    assert platform.received == []


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://host", "127.0.0.1:8090", "http://host/?q=1", ""])
def test_a_malformed_base_url_is_refused(keys: Keys, url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        make_client(keys, url)


def test_a_client_needs_a_platform_key(keys: Keys) -> None:
    with pytest.raises(ValueError, match="platform public key"):
        make_client(keys, "http://127.0.0.1:1", platform_keys={})


async def test_a_client_outside_its_context_refuses_to_send(keys: Keys) -> None:
    client = make_client(keys, "http://127.0.0.1:1")

    with pytest.raises(RuntimeError, match="async with"):
        await client.request("GET", "/v3/x")
