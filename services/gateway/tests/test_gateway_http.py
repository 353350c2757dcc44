"""The gateway over HTTP, publishing to a real NATS JetStream: accept, refuse, or ask to retry.

Through the unsigned demo route (``WECHATPAY_ACCEPT_UNSIGNED=true``); the signed webhook is
covered by test_gateway_webhooks.py.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import grpc
import pytest
from eventbus.streams import ensure_streams
from gateway.adapters.bus import PAYMENT_CAPTURED, PaymentsPublisher
from gateway.adapters.directory import Directory
from gateway.adapters.replays import ReplayGuard
from gateway.adapters.services import Backends
from gateway.entrypoints.app import HttpServer, create_app
from gateway.entrypoints.keys import Webhooks
from mall.member.v1 import member_service_pb2_grpc
from mall.payments.v1 import events_pb2
from mall.points.v1 import points_service_pb2_grpc
from mall_testing.demo import DemoMall, payment_notification
from mall_testing.embedded import free_port
from mall_testing.plugin import Nats
from prometheus_client import REGISTRY

WEBHOOK = "/wechatpay/notifications"
PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    headers: Mapping[str, str]
    body: bytes


async def reply_of(resp: aiohttp.ClientResponse) -> Reply:
    return Reply(resp.status, resp.content_type, resp.headers.copy(), await resp.read())


@dataclass(frozen=True)
class Stored:
    subject: str
    headers: dict[str, str]
    data: bytes


@dataclass(frozen=True)
class Gateway:
    url: str
    http: aiohttp.ClientSession
    nats: Nats

    async def post(self, body: Any, headers: Mapping[str, str] | None = None) -> Reply:
        data = io.BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode())
        sent = {"Content-Type": "application/json", **(headers or {})}
        async with self.http.post(self.url + WEBHOOK, data=data, headers=sent) as resp:
            return await reply_of(resp)

    async def get(self, path: str) -> Reply:
        async with self.http.get(self.url + path) as resp:
            return await reply_of(resp)

    async def message(self, seq: int) -> Stored:
        msg = await self.nats.js.get_msg("PAYMENTS", seq)
        assert msg.subject is not None
        assert msg.data is not None
        return Stored(msg.subject, dict(msg.headers or {}), msg.data)

    async def stored(self) -> int:
        info = await self.nats.js.stream_info("PAYMENTS")
        return int(info.state.messages)


@pytest.fixture
async def gateway(jetstream: Nats) -> AsyncIterator[Gateway]:
    """The gateway's app served on a free port, with the unsigned demo route (local demos
    only; the signed webhook has its own tests); member and points are not running."""
    await ensure_streams(jetstream.js, "PAYMENTS")
    webhooks = Webhooks(merchants={}, shops=Directory(), guard=await ReplayGuard.open(jetstream.js))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as nowhere:
        app = create_app(
            PaymentsPublisher(jetstream.nc, timeout_s=2),
            Backends(
                member=member_service_pb2_grpc.MemberServiceStub(nowhere),
                points=points_service_pb2_grpc.PointsServiceStub(nowhere),
                timeout_s=2,
            ),
            webhooks,
            accept_unsigned=True,
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
            async with aiohttp.ClientSession() as http:
                yield Gateway(f"http://127.0.0.1:{server.port}", http, jetstream)
        finally:
            stop.set()
            await serving


def notification(unique_id: str, **resource: Any) -> dict[str, Any]:
    body = payment_notification(DemoMall(), openid=f"o-{unique_id}", amount_fen=12_345)
    body["resource"].update(resource)
    return body


def problem_of(resp: Reply) -> dict[str, Any]:
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = json.loads(resp.body)
    assert body["status"] == resp.status
    assert body["type"].endswith(f"/{body['code']}")
    assert body["detail"]
    return body


# -- accepted -------------------------------------------------------------------------------


async def test_a_valid_notification_is_published_once_then_acknowledged(
    gateway: Gateway, unique_id: str
) -> None:
    body = notification(unique_id)
    transaction_id = body["resource"]["transaction_id"]

    resp = await gateway.post(body)

    assert resp.status == 204
    assert await gateway.stored() == 1
    msg = await gateway.message(1)
    assert msg.subject == PAYMENT_CAPTURED
    assert msg.headers["Nats-Msg-Id"] == transaction_id
    captured = events_pb2.PaymentCaptured.FromString(msg.data)
    resource = body["resource"]
    assert (captured.event_id, captured.transaction_id) == (transaction_id, transaction_id)
    assert captured.notification_id == body["id"]
    assert (captured.appid, captured.mchid) == (resource["appid"], resource["mchid"])
    assert (captured.openid, captured.shop_number) == (f"o-{unique_id}", resource["shop_number"])
    assert captured.amount_fen == 12_345
    paid_at = datetime.fromisoformat(resource["time_end"])
    assert captured.paid_at.ToDatetime(tzinfo=paid_at.tzinfo) == paid_at
    assert captured.received_at.ToDatetime(tzinfo=UTC) > datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_retried_notification_is_stored_once(gateway: Gateway, unique_id: str) -> None:
    body = notification(unique_id)

    statuses = [(await gateway.post(body)).status for _ in range(3)]

    assert statuses == [204, 204, 204]
    assert await gateway.stored() == 1


async def test_two_payments_are_two_messages(gateway: Gateway, unique_id: str) -> None:
    first, second = notification(unique_id), notification(unique_id)

    assert (await gateway.post(first)).status == 204
    assert (await gateway.post(second)).status == 204

    assert await gateway.stored() == 2


async def test_the_correlation_id_sent_is_echoed_and_travels_on(
    gateway: Gateway, unique_id: str
) -> None:
    correlation_id = f"corr-{unique_id}"

    resp = await gateway.post(notification(unique_id), headers={"X-Correlation-Id": correlation_id})

    assert resp.status == 204
    assert resp.headers["x-correlation-id"] == correlation_id
    msg = await gateway.message(1)
    assert msg.headers["x-correlation-id"] == correlation_id


async def test_a_correlation_id_is_made_when_none_is_sent(gateway: Gateway, unique_id: str) -> None:
    first = await gateway.post(notification(unique_id))
    second = await gateway.post(b"{")

    made = [first.headers.get("x-correlation-id"), second.headers.get("x-correlation-id")]
    assert all(made)
    assert made[0] != made[1]
    msg = await gateway.message(1)
    assert msg.headers["x-correlation-id"] == made[0]


# -- refused: 400 and nothing published -----------------------------------------------------


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b"\xff\xfe\x00{}"])
async def test_a_body_that_is_not_json_is_refused(gateway: Gateway, raw: bytes) -> None:
    resp = await gateway.post(raw, headers={"x-correlation-id": "corr-bad-json"})

    assert resp.status == 400
    assert problem_of(resp)["code"] == "invalid_json"
    assert resp.headers["x-correlation-id"] == "corr-bad-json"
    assert await gateway.stored() == 0


@pytest.mark.parametrize("field", ["transaction_id", "openid", "amount", "appid"])
async def test_a_notification_missing_a_field_is_refused(
    gateway: Gateway, unique_id: str, field: str
) -> None:
    body = notification(unique_id)
    del body["resource"][field]

    resp = await gateway.post(body)

    assert resp.status == 400
    problem = problem_of(resp)
    assert problem["code"] == "missing_field"
    assert field in problem["detail"]
    assert await gateway.stored() == 0


@pytest.mark.parametrize(
    "resource", [{"amount": 0}, {"amount": "100"}, {"time_end": "2025-11-26T14:30:00"}]
)
async def test_a_notification_with_a_bad_field_is_refused(
    gateway: Gateway, unique_id: str, resource: dict[str, Any]
) -> None:
    resp = await gateway.post(notification(unique_id, **resource))

    assert resp.status == 400
    assert problem_of(resp)["code"] == "invalid_field"
    assert await gateway.stored() == 0


async def test_an_unsupported_event_is_refused(gateway: Gateway, unique_id: str) -> None:
    body = notification(unique_id)
    body["event_type"] = "MALL_REFUND.SUCCESS"

    resp = await gateway.post(body)

    assert resp.status == 400
    assert problem_of(resp)["code"] == "unsupported_event_type"
    assert await gateway.stored() == 0


async def test_a_body_over_64_kib_is_refused(gateway: Gateway, unique_id: str) -> None:
    body = notification(unique_id)
    body["summary"] = "x" * (64 * 1024)

    resp = await gateway.post(body)

    assert resp.status == 413
    assert problem_of(resp)["code"] == "body_too_large"
    assert await gateway.stored() == 0


async def test_a_body_just_under_64_kib_is_accepted(gateway: Gateway, unique_id: str) -> None:
    body = notification(unique_id)
    body["summary"] = ""
    padding = 64 * 1024 - len(json.dumps(body).encode())
    body["summary"] = "x" * padding
    assert len(json.dumps(body).encode()) == 64 * 1024

    resp = await gateway.post(body)

    assert resp.status == 204
    assert await gateway.stored() == 1


async def test_a_body_over_the_server_limit_is_refused_as_a_problem(gateway: Gateway) -> None:
    resp = await gateway.post(b"x" * (2 * 1024 * 1024))

    assert resp.status == 413
    assert problem_of(resp)["code"] == "body_too_large"
    assert await gateway.stored() == 0


# -- not stored: 503 so that WeChat Pay retries ---------------------------------------------


async def test_without_the_payments_stream_the_platform_is_asked_to_retry(
    gateway: Gateway, unique_id: str
) -> None:
    await gateway.nats.js.delete_stream("PAYMENTS")
    body = notification(unique_id)

    resp = await gateway.post(body)

    assert resp.status == 503
    assert problem_of(resp)["code"] == "publish_failed"
    # The retry succeeds once the stream is back: nothing was lost or half-accepted.
    await ensure_streams(gateway.nats.js, "PAYMENTS")
    assert (await gateway.post(body)).status == 204
    assert await gateway.stored() == 1


# -- the rest of the surface ----------------------------------------------------------------


async def test_liveness_and_readiness(gateway: Gateway) -> None:
    live, ready = await gateway.get("/healthz"), await gateway.get("/readyz")

    assert (live.status, json.loads(live.body)) == (200, {"status": "ok"})
    assert (ready.status, json.loads(ready.body)) == (
        200,
        {"status": "ready", "waiting_for": [], "backends": {}},
    )


async def test_an_unknown_route_is_a_problem(gateway: Gateway) -> None:
    resp = await gateway.get("/no/such/route")

    assert resp.status == 404
    assert problem_of(resp)["code"] == "not_found"


async def test_requests_are_counted_by_route_pattern_and_status(
    gateway: Gateway, unique_id: str
) -> None:
    route = "/wechatpay/notifications"

    def count(status: str) -> float:
        value = REGISTRY.get_sample_value(
            "mall_http_requests_total", {"route": route, "status": status}
        )
        return value or 0.0

    accepted, refused = count("204"), count("400")
    await gateway.post(notification(unique_id))
    await gateway.post(b"{")

    assert (count("204"), count("400")) == (accepted + 1, refused + 1)
    # Paths carrying ids (openids, mall ids) never become label values.
    routes = {
        s.labels["route"]
        for m in REGISTRY.collect()
        if m.name == "mall_http_requests"
        for s in m.samples
    }
    assert all("{" in r or "o-" not in r for r in routes)
