"""The signed WeChat Pay webhook over HTTP, publishing to a real NATS JetStream.

Every refusal has its own code and publishes nothing, and its valid twin (the same
notification, sent right) is then accepted once. Keys are made at test time; none are in git.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from eventbus.streams import ensure_streams
from gateway.adapters.bus import (
    AUTHORIZATION_CHANGED,
    PAYMENT_CAPTURED,
    PAYMENT_REFUNDED,
    PaymentsPublisher,
)
from gateway.adapters.directory import Directory
from gateway.adapters.merchants import load_merchants
from gateway.adapters.replays import BUCKET, ReplayGuard
from gateway.adapters.services import Backends
from gateway.bootstrap import bootstrap
from gateway.config import Settings
from gateway.entrypoints.app import HttpServer, create_app
from gateway.entrypoints.keys import Webhooks
from kit.cli import running
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from mall.member.v1 import directory_pb2, member_service_pb2_grpc
from mall.payments.v1 import events_pb2
from mall.points.v1 import points_service_pb2_grpc
from mall_testing.embedded import free_port
from mall_testing.plugin import Nats
from wechatpay import notifications as wn
from wechatpay.signing import PrivateKey

APIV3_KEY = "MallCircle-test-APIv3-key-32-chr"
OWN_APIV3_KEY = "A-mall-with-its-own-merchant-32c"
PROVIDER = "1900000109"  # service-provider merchant: serves every mall below
OWN = "1900000200"  # a mall that has its own merchant
KEY_ID = "PUB_KEY_ID_0114232134912410000000000000"


# -- the platform's side ---------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    key: PrivateKey  # behind a platform public key id
    cert_key: PrivateKey  # behind a platform certificate (rotation: both are current)
    cert_serial: str
    cert_pem: bytes
    stranger: PrivateKey  # nobody configured this one


def generate_private_key() -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _certificate(key: PrivateKey, serial: int) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "WeChat Pay platform (test)")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


@pytest.fixture(scope="module")
def keys() -> Keys:
    cert_key, serial = generate_private_key(), x509.random_serial_number()
    return Keys(
        key=generate_private_key(),
        cert_key=cert_key,
        cert_serial=f"{serial:X}",
        cert_pem=_certificate(cert_key, serial),
        stranger=generate_private_key(),
    )


@dataclass(frozen=True)
class Draft:
    """A notification the platform would send, and the knobs a test turns to spoil it."""

    notification_id: str
    event_type: str
    resource: dict[str, Any]
    mchid: str = PROVIDER
    apiv3_key: str = APIV3_KEY
    associated_data: str = "transaction"
    use_cert_key: bool = False
    signer: PrivateKey | None = None
    serial: str | None = None
    skew_s: int = 0
    edit_envelope: Callable[[dict[str, Any]], None] | None = None
    raw_body: bytes | None = None
    drop_header: str | None = None
    signature: str | None = None
    create_time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def seal(self, keys: Keys) -> tuple[dict[str, str], bytes]:
        """Encrypted and signed afresh (new nonces, timestamp now), as each retry is."""
        envelope = {
            "id": self.notification_id,
            "create_time": self.create_time,
            "event_type": self.event_type,
            "resource_type": "encrypt-resource",
            "summary": "test",
            "resource": wn.seal_resource(
                self.apiv3_key, self.resource, associated_data=self.associated_data
            ),
        }
        if self.edit_envelope:
            self.edit_envelope(envelope)
        body = self.raw_body or json.dumps(envelope, ensure_ascii=False).encode()
        key, serial = (keys.cert_key, keys.cert_serial) if self.use_cert_key else (keys.key, KEY_ID)
        headers = wn.signature_headers(
            self.signer or key,
            self.serial or serial,
            body,
            timestamp=int(time.time()) + self.skew_s,
        )
        if self.signature is not None:
            headers["Wechatpay-Signature"] = self.signature
        if self.drop_header:
            del headers[self.drop_header]
        return headers, body


@dataclass(frozen=True)
class Mall:
    mall_id: str
    appid: str
    shop_number: str
    store_id: str
    tenant_id: str


@pytest.fixture
def mall(unique_id: str) -> Mall:
    return Mall(f"mall-{unique_id}", f"wx{unique_id}", f"SHOP-{unique_id}", "s-1", "t-1")


def payment(mall: Mall, **resource: Any) -> Draft:
    body = {
        "mchid": "1230000109",
        "merchant_name": "Coffee Corner",
        "shop_name": "Coffee Corner L1",
        "shop_number": mall.shop_number,
        "appid": mall.appid,
        "openid": f"o-{uuid.uuid4().hex[:8]}",
        "time_end": "2026-11-26T10:00:00+08:00",
        "amount": 8800,
        "transaction_id": f"4200{uuid.uuid4().int % 10**24:024d}",
        "commit_tag": "AABBCC",
        **resource,
    }
    return Draft(str(uuid.uuid4()), "MALL_TRANSACTION.SUCCESS", body)


def refund(mall: Mall, **resource: Any) -> Draft:
    body = {
        "mchid": "1230000109",
        "merchant_name": "Coffee Corner",
        "shop_name": "Coffee Corner L1",
        "shop_number": mall.shop_number,
        "appid": mall.appid,
        "openid": "o-refunded",
        "refund_time": "2026-11-27T09:30:00+08:00",
        "pay_amount": 8800,
        "refund_amount": 3000,
        "transaction_id": f"4200{uuid.uuid4().int % 10**24:024d}",
        "refund_id": f"5030{uuid.uuid4().int % 10**24:024d}",
        **resource,
    }
    return Draft(str(uuid.uuid4()), "MALL_REFUND.SUCCESS", body, associated_data="refund")


def authorization(mall: Mall, **resource: Any) -> Draft:
    body = {
        "openid": "o-authorised",
        "appid": mall.appid,
        "mchid": PROVIDER,
        "code": "CARD-0001",
        "auth_type": "REGISTERED_AND_AUTHORIZATION_MODE",
        **resource,
    }
    return Draft(str(uuid.uuid4()), "MALL_AUTH.ACTIVATE_CARD", body, associated_data="mall_auth")


# -- the gateway -----------------------------------------------------------------------------


def write_merchants(folder: Path, keys: Keys) -> Path:
    """The merchants file as ops write it: a provider with two platform keys (rotation), and
    a mall with its own merchant and APIv3 key."""
    (folder / "pub_key.pem").write_bytes(public_key_pem(keys.key))
    (folder / "wechatpay_cert.pem").write_bytes(keys.cert_pem)
    merchants = [
        {
            "mchid": PROVIDER,
            "apiv3_key": APIV3_KEY,
            "platform_public_keys": {
                KEY_ID: "pub_key.pem",
                keys.cert_serial: str(folder / "wechatpay_cert.pem"),
            },
        },
        {"mchid": OWN, "apiv3_key": OWN_APIV3_KEY, "platform_public_keys": {KEY_ID: "pub_key.pem"}},
    ]
    path = folder / "merchants.json"
    path.write_text(json.dumps(merchants))
    return path


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes

    def refusal(self) -> str:
        """The stable code of a platform-shaped refusal."""
        assert self.content_type == "application/json"
        body: dict[str, str] = json.loads(self.body)
        assert body["code"] == "FAIL"
        assert body["message"].startswith(f"{body['error_code']}: ")
        return body["error_code"]


@dataclass
class Gateway:
    url: str
    http: aiohttp.ClientSession
    nats: Nats
    keys: Keys
    directory_loaded: bool = True

    async def send(self, draft: Draft, *, path: str | None = None) -> Reply:
        headers, body = draft.seal(self.keys)
        return await self.post(draft.mchid, headers, body, path=path)

    async def post(
        self, mchid: str, headers: Mapping[str, str], body: bytes, *, path: str | None = None
    ) -> Reply:
        url = self.url + (path or f"/wechatpay/notifications/{mchid}")
        sent = {"Content-Type": "application/json", **headers}
        async with self.http.post(url, data=io.BytesIO(body), headers=sent) as resp:
            return Reply(resp.status, resp.content_type, await resp.read())

    async def get(self, path: str) -> Reply:
        async with self.http.get(self.url + path) as resp:
            return Reply(resp.status, resp.content_type, await resp.read())

    async def stored(self) -> int:
        info = await self.nats.js.stream_info("PAYMENTS")
        return int(info.state.messages)

    async def message(self, seq: int) -> tuple[str, dict[str, str], bytes]:
        msg = await self.nats.js.get_msg("PAYMENTS", seq)
        assert msg.subject is not None
        assert msg.data is not None
        return msg.subject, dict(msg.headers or {}), msg.data


@pytest.fixture
async def gateway(
    jetstream: Nats, tmp_path: Path, keys: Keys, mall: Mall
) -> AsyncIterator[Gateway]:
    """The gateway's app on a free port, with the demo merchants and a one-store directory."""
    await ensure_streams(jetstream.js, "PAYMENTS")
    directory = Directory.from_entries(
        [directory_pb2.Mall(mall_id=mall.mall_id, appid=mall.appid, name="Test Mall")],
        [
            directory_pb2.Store(
                mall_id=mall.mall_id,
                store_id=mall.store_id,
                tenant_id=mall.tenant_id,
                shop_number=mall.shop_number,
            )
        ],
    )
    state = Gateway("", aiohttp.ClientSession(), jetstream, keys)
    webhooks = Webhooks(
        merchants=load_merchants(write_merchants(tmp_path, keys)),
        shops=directory,
        guard=await ReplayGuard.open(jetstream.js),
        directory_ready=lambda: state.directory_loaded,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as nowhere, state.http:
        app = create_app(
            PaymentsPublisher(jetstream.nc, timeout_s=2),
            Backends(
                member=member_service_pb2_grpc.MemberServiceStub(nowhere),
                points=points_service_pb2_grpc.PointsServiceStub(nowhere),
                timeout_s=2,
            ),
            webhooks,
        )
        server = HttpServer(app, host="127.0.0.1", port=0, grace_s=1)
        stop = asyncio.Event()
        serving = asyncio.create_task(server.run(stop))
        try:
            for _ in range(500):
                if server.port or serving.done():
                    break
                await asyncio.sleep(0.01)
            assert server.port, "the HTTP server never bound a port"
            state.url = f"http://127.0.0.1:{server.port}"
            yield state
        finally:
            stop.set()
            await serving


# -- accepted --------------------------------------------------------------------------------


async def test_a_payment_is_verified_decrypted_published_then_acknowledged(
    gateway: Gateway, mall: Mall
) -> None:
    draft = payment(mall)
    r = draft.resource

    assert (await gateway.send(draft)).status == 204

    assert await gateway.stored() == 1
    subject, headers, data = await gateway.message(1)
    assert subject == PAYMENT_CAPTURED
    assert headers["Nats-Msg-Id"] == r["transaction_id"]
    captured = events_pb2.PaymentCaptured.FromString(data)
    assert (captured.event_id, captured.transaction_id) == (r["transaction_id"],) * 2
    assert captured.notification_id == draft.notification_id
    assert captured.mall_id == mall.mall_id
    assert (captured.appid, captured.mchid, captured.shop_number) == (
        mall.appid,
        "1230000109",
        mall.shop_number,
    )
    assert (captured.openid, captured.amount_fen, captured.commit_tag) == (
        r["openid"],
        8800,
        "AABBCC",
    )
    assert captured.paid_at.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    assert captured.received_at.ToDatetime(tzinfo=UTC) > datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_refund_publishes_payment_refunded_keyed_by_refund_id(
    gateway: Gateway, mall: Mall
) -> None:
    draft = refund(mall)
    r = draft.resource

    assert (await gateway.send(draft)).status == 204

    subject, headers, data = await gateway.message(1)
    assert subject == PAYMENT_REFUNDED
    assert headers["Nats-Msg-Id"] == r["refund_id"]
    refunded = events_pb2.PaymentRefunded.FromString(data)
    assert (refunded.event_id, refunded.refund_id) == (r["refund_id"],) * 2
    assert refunded.transaction_id == r["transaction_id"]
    assert (refunded.pay_amount_fen, refunded.refund_amount_fen) == (8800, 3000)
    assert refunded.refunded_at.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 27, 1, 30, tzinfo=UTC)
    assert (refunded.mall_id, refunded.shop_number) == (mall.mall_id, mall.shop_number)
    assert (refunded.openid, refunded.notification_id) == ("o-refunded", draft.notification_id)
    assert (refunded.merchant_name, refunded.shop_name) == ("Coffee Corner", "Coffee Corner L1")


async def test_an_authorization_publishes_authorization_changed_keyed_by_notification_id(
    gateway: Gateway, mall: Mall
) -> None:
    draft = replace(authorization(mall), create_time="2026-11-26T09:59:00+08:00")

    assert (await gateway.send(draft)).status == 204

    subject, headers, data = await gateway.message(1)
    assert subject == AUTHORIZATION_CHANGED
    assert headers["Nats-Msg-Id"] == draft.notification_id
    changed = events_pb2.AuthorizationChanged.FromString(data)
    assert (changed.event_id, changed.notification_id) == (draft.notification_id,) * 2
    assert (changed.appid, changed.mchid, changed.openid) == (mall.appid, PROVIDER, "o-authorised")
    assert changed.card_code == "CARD-0001"
    assert changed.auth_type == events_pb2.AUTH_TYPE_REGISTERED_AND_AUTHORIZATION_MODE
    assert changed.changed_at.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 26, 1, 59, tzinfo=UTC)
    assert changed.mall_id == mall.mall_id


async def test_an_authorization_from_an_appid_the_directory_lacks_is_still_published(
    gateway: Gateway, mall: Mall
) -> None:
    draft = authorization(mall, appid="wx-not-onboarded", auth_type="A_MODE_ADDED_LATER")

    assert (await gateway.send(draft)).status == 204

    changed = events_pb2.AuthorizationChanged.FromString((await gateway.message(1))[2])
    assert (changed.mall_id, changed.auth_type) == ("", events_pb2.AUTH_TYPE_UNSPECIFIED)


async def test_both_platform_keys_of_a_rotation_are_accepted(gateway: Gateway, mall: Mall) -> None:
    by_key_id = payment(mall)
    by_certificate = replace(payment(mall), use_cert_key=True)

    assert (await gateway.send(by_key_id)).status == 204
    assert (await gateway.send(by_certificate)).status == 204

    assert await gateway.stored() == 2


async def test_a_retry_is_accepted_each_time_and_stored_once(gateway: Gateway, mall: Mall) -> None:
    draft = payment(mall)
    headers, body = draft.seal(gateway.keys)

    # Re-encrypted and re-signed each time, as the platform may; then byte for byte again.
    statuses = [(await gateway.send(draft)).status for _ in range(3)]
    statuses.append((await gateway.post(PROVIDER, headers, body)).status)

    assert statuses == [204] * 4
    assert await gateway.stored() == 1


async def test_each_merchant_opens_its_own_notifications(gateway: Gateway, mall: Mall) -> None:
    """Service-provider mode: one gateway, a notify_url per merchant, an APIv3 key each."""
    own = replace(payment(mall), mchid=OWN, apiv3_key=OWN_APIV3_KEY)
    providers = payment(mall)

    assert (await gateway.send(own)).status == 204
    misdirected = await gateway.send(replace(providers, mchid=OWN))

    assert (misdirected.status, misdirected.refusal()) == (400, "decrypt_failed")
    assert await gateway.stored() == 1


# -- refused: the refusal publishes nothing; the valid twin is accepted once -----------------

Spoil = Callable[[Draft, Keys], Draft]


def _flip(index: int) -> Callable[[dict[str, Any]], None]:
    def edit(envelope: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
        raw[index] ^= 0x01
        envelope["resource"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()

    return edit


def _set_resource(**fields: str) -> Callable[[dict[str, Any]], None]:
    def edit(envelope: dict[str, Any]) -> None:
        envelope["resource"].update(fields)

    return edit


def _without(field_name: str) -> Spoil:
    return lambda d, _: replace(
        d, resource={k: v for k, v in d.resource.items() if k != field_name}
    )


SPOILERS: dict[str, tuple[Spoil, int, str]] = {
    "missing signature header": (
        lambda d, _: replace(d, drop_header="Wechatpay-Signature"),
        401,
        "missing_signature_headers",
    ),
    "unknown serial": (
        lambda d, k: replace(d, signer=k.stranger, serial="PUB_KEY_ID_NOT_CONFIGURED"),
        401,
        "unknown_serial",
    ),
    "stale timestamp, past": (lambda d, _: replace(d, skew_s=-330), 401, "stale_timestamp"),
    "stale timestamp, future": (lambda d, _: replace(d, skew_s=330), 401, "stale_timestamp"),
    "bad signature": (lambda d, k: replace(d, signer=k.stranger), 401, "bad_signature"),
    "signature probe": (
        lambda d, _: replace(d, signature="WECHATPAY/SIGNTEST/" + "A" * 344),
        401,
        "bad_signature",
    ),
    "tampered ciphertext": (lambda d, _: replace(d, edit_envelope=_flip(0)), 400, "decrypt_failed"),
    "tampered tag": (lambda d, _: replace(d, edit_envelope=_flip(-1)), 400, "decrypt_failed"),
    "wrong associated data": (
        lambda d, _: replace(d, edit_envelope=_set_resource(associated_data="refund")),
        400,
        "decrypt_failed",
    ),
    "wrong APIv3 key": (lambda d, _: replace(d, apiv3_key="W" * 32), 400, "decrypt_failed"),
    "another algorithm": (
        lambda d, _: replace(d, edit_envelope=_set_resource(algorithm="AEAD_SM4_GCM")),
        400,
        "unsupported_algorithm",
    ),
    "body not JSON": (lambda d, _: replace(d, raw_body=b"{not json"), 400, "invalid_json"),
    "missing amount": (_without("amount"), 400, "missing_field"),
    "missing transaction_id": (_without("transaction_id"), 400, "missing_field"),
    "amount as text": (
        lambda d, _: replace(d, resource={**d.resource, "amount": "8800"}),
        400,
        "invalid_field",
    ),
    "time without offset": (
        lambda d, _: replace(d, resource={**d.resource, "time_end": "2026-11-26T10:00:00"}),
        400,
        "invalid_field",
    ),
    "unsupported event type": (
        lambda d, _: replace(d, event_type="TRANSACTION.SUCCESS"),
        400,
        "unsupported_event_type",
    ),
    "unknown shop": (
        lambda d, _: replace(d, resource={**d.resource, "shop_number": "SHOP-NOT-ONBOARDED"}),
        422,
        "unknown_shop",
    ),
    "unknown merchant": (lambda d, _: replace(d, mchid="1999999999"), 404, "unknown_merchant"),
    "body over 64 KiB": (
        lambda d, _: replace(d, raw_body=b" " * (64 * 1024 + 1)),
        413,
        "body_too_large",
    ),
}


@pytest.mark.parametrize(("spoil", "status", "code"), SPOILERS.values(), ids=SPOILERS.keys())
async def test_a_refusal_publishes_nothing_and_its_valid_twin_is_accepted(
    gateway: Gateway, mall: Mall, spoil: Spoil, status: int, code: str
) -> None:
    valid = payment(mall)

    refused = await gateway.send(spoil(valid, gateway.keys))

    assert (refused.status, refused.refusal()) == (status, code)
    assert await gateway.stored() == 0
    # A refusal leaves no trace: the same notification sent right (same id) is accepted.
    assert (await gateway.send(valid)).status == 204
    assert await gateway.stored() == 1


@pytest.mark.parametrize("draft", [refund, authorization])
async def test_refunds_and_authorizations_are_refused_alike(
    gateway: Gateway, mall: Mall, draft: Callable[[Mall], Draft]
) -> None:
    valid = draft(mall)

    spoiled = await gateway.send(replace(valid, edit_envelope=_flip(-1)))
    missing = await gateway.send(_without("openid")(valid, gateway.keys))

    assert (spoiled.status, spoiled.refusal()) == (400, "decrypt_failed")
    assert (missing.status, missing.refusal()) == (400, "missing_field")
    assert await gateway.stored() == 0
    assert (await gateway.send(valid)).status == 204
    assert await gateway.stored() == 1


async def test_a_refund_of_more_than_was_paid_is_refused(gateway: Gateway, mall: Mall) -> None:
    resp = await gateway.send(refund(mall, pay_amount=100, refund_amount=101))

    assert (resp.status, resp.refusal()) == (400, "invalid_field")
    assert await gateway.stored() == 0


async def test_a_notification_id_reused_with_another_body_is_refused(
    gateway: Gateway, mall: Mall
) -> None:
    first = payment(mall)
    reused = replace(first, resource={**first.resource, "amount": 1})

    assert (await gateway.send(first)).status == 204
    resp = await gateway.send(reused)

    assert (resp.status, resp.refusal()) == (409, "notification_id_reused")
    assert await gateway.stored() == 1
    # The first body is still welcome, and still stored once.
    assert (await gateway.send(first)).status == 204
    assert await gateway.stored() == 1
    entries = await (await gateway.nats.js.key_value(BUCKET)).keys()
    assert entries == [entries[0]]
    assert first.notification_id not in entries[0]  # hashed: ids are not KV-safe


async def test_an_unknown_shop_is_recorded_in_a_structured_log_line(
    gateway: Gateway, mall: Mall
) -> None:
    draft = payment(mall, shop_number="SHOP-NOT-ONBOARDED")

    with structlog.testing.capture_logs() as logs:
        resp = await gateway.send(draft)

    assert resp.status == 422
    [record] = [e for e in logs if e["event"] == "notification_refused"]
    assert record["code"] == "unknown_shop"
    assert record["log_level"] == "warning"
    assert (record["mchid"], record["notification_id"]) == (PROVIDER, draft.notification_id)
    assert (record["shop_number"], record["transaction_id"]) == (
        "SHOP-NOT-ONBOARDED",
        draft.resource["transaction_id"],
    )
    assert "openid" not in record


# -- not stored: 503 in the platform's shape, so that WeChat Pay retries --------------------


async def test_without_the_payments_stream_the_platform_is_asked_to_retry(
    gateway: Gateway, mall: Mall
) -> None:
    await gateway.nats.js.delete_stream("PAYMENTS")
    draft = payment(mall)

    resp = await gateway.send(draft)

    assert (resp.status, resp.refusal()) == (503, "publish_failed")
    # The id was noted before the publish failed: the retry is still welcome, and stored.
    await ensure_streams(gateway.nats.js, "PAYMENTS")
    assert (await gateway.send(draft)).status == 204
    assert await gateway.stored() == 1


async def test_while_the_directory_copy_loads_the_platform_is_asked_to_retry(
    gateway: Gateway, mall: Mall
) -> None:
    gateway.directory_loaded = False
    draft = payment(mall)

    resp = await gateway.send(draft)
    ready = await gateway.get("/readyz")

    assert (resp.status, resp.refusal()) == (503, "directory_loading")
    assert ready.status == 503
    assert json.loads(ready.body)["waiting_for"] == ["directory"]
    gateway.directory_loaded = True
    assert (await gateway.send(draft)).status == 204
    assert (await gateway.get("/readyz")).status == 200


# -- the unsigned demo route -----------------------------------------------------------------


async def test_the_unsigned_route_is_not_routed_by_default(gateway: Gateway, mall: Mall) -> None:
    plaintext = {"id": "demo-1", "event_type": "MALL_TRANSACTION.SUCCESS"}
    body = json.dumps({**plaintext, "resource": payment(mall).resource}).encode()

    resp = await gateway.post(PROVIDER, {}, body, path="/wechatpay/notifications")

    assert resp.status == 404
    assert await gateway.stored() == 0


# -- the composition root --------------------------------------------------------------------


async def test_the_composition_root_serves_the_signed_webhook(
    jetstream: Nats, nats_url: str, tmp_path: Path, keys: Keys, mall: Mall
) -> None:
    """Settings → merchants file, directory copy from member's DIRECTORY bucket, replay
    bucket, PAYMENTS stream; no unsigned route unless asked."""
    directory = await open_bucket(jetstream.js, DIRECTORY_BUCKET)
    await directory.put(
        f"mall.{mall.mall_id}",
        directory_pb2.Mall(mall_id=mall.mall_id, appid=mall.appid).SerializeToString(),
    )
    await directory.put(
        f"store.{mall.mall_id}.{mall.store_id}",
        directory_pb2.Store(
            mall_id=mall.mall_id,
            store_id=mall.store_id,
            tenant_id=mall.tenant_id,
            shop_number=mall.shop_number,
        ).SerializeToString(),
    )
    settings = Settings(
        nats_url=nats_url,
        http_port=0,
        wechatpay_merchants_file=write_merchants(tmp_path, keys),
        log_format="console",
        log_level="warning",
    )
    async with (
        bootstrap(settings) as roles,
        running(roles, ["serve"]),
        aiohttp.ClientSession() as http,
    ):
        for _ in range(500):
            if roles.http.port:
                break
            await asyncio.sleep(0.01)
        gateway = Gateway(f"http://127.0.0.1:{roles.http.port}", http, jetstream, keys)
        for _ in range(500):
            if (await gateway.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.01)
        draft = payment(mall)

        accepted = await gateway.send(draft)
        unsigned = await gateway.post(PROVIDER, {}, b"{}", path="/wechatpay/notifications")

        assert (accepted.status, unsigned.status) == (204, 404)
        captured = events_pb2.PaymentCaptured.FromString((await gateway.message(1))[2])
        assert (captured.transaction_id, captured.mall_id) == (
            draft.resource["transaction_id"],
            mall.mall_id,
        )
