"""The gateway answers what its OpenAPI 3.1 document says: schemathesis generates requests
from ``/openapi.json`` of a real running gateway (real member and points services, the WeChat
simulator, PostgreSQL, NATS) and checks every answer: no 5xx, a documented status, content
type, headers and body. Plus the rate limits, which the fuzzing run has off.

schemathesis calls synchronously (requests), so the stack runs in a thread with its own event
loop while the test thread waits on each call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler
from coupons.bootstrap import MIGRATIONS as COUPONS_MIGRATIONS
from coupons.bootstrap import bootstrap as coupons_bootstrap
from coupons.config import Settings as CouponsSettings
from gateway.bootstrap import bootstrap as gateway_bootstrap
from gateway.config import Settings as GatewaySettings
from gateway.domain.shoppers import Session
from gateway.entrypoints.keys import SESSION, SHOPPERS
from gateway.entrypoints.middleware import request_context
from gateway.entrypoints.openapi import document
from gateway.entrypoints.routes import operations
from gateway.entrypoints.throttle import RateLimits, Throttle
from hypothesis import HealthCheck, settings
from kit.cli import running
from kit.migrations import migrate
from mall_testing.demo import DemoMall, seed
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from member.bootstrap import bootstrap as member_bootstrap
from member.config import Settings as MemberSettings
from parking.bootstrap import MIGRATIONS as PARKING_MIGRATIONS
from parking.bootstrap import bootstrap as parking_bootstrap
from parking.config import Settings as ParkingSettings
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.bootstrap import bootstrap as points_bootstrap
from points.config import Settings as PointsSettings
from schemathesis import checks
from wechatpay_simulator.app import serve
from wechatpay_simulator.config import MiniProgram
from wechatpay_simulator.config import Settings as SimulatorSettings


@dataclass(frozen=True)
class Live:
    url: str
    token: str


async def _port(get: Any) -> int:
    for _ in range(500):
        if port := get():
            return int(port)
        await asyncio.sleep(0.01)
    raise RuntimeError("a server never bound its port")


@contextlib.asynccontextmanager
async def _stack(
    member_db: str,
    points_db: str,
    nats_url: str,
    folder: Path,
    coupons_db: str,
    parking_db: str,
) -> AsyncIterator[Live]:
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    await migrate(coupons_db, COUPONS_MIGRATIONS)
    await migrate(parking_db, PARKING_MIGRATIONS)
    common: dict[str, Any] = {
        "nats_url": nats_url, "grpc_port": 0, "log_format": "console", "log_level": "error"
    }  # fmt: skip
    mall = DemoMall.unique()
    secret = secrets.token_hex(16)
    (folder / "miniprograms.json").write_text(json.dumps({mall.appid: secret}))
    sim_settings = SimulatorSettings.create(miniprograms=(MiniProgram(mall.appid, secret),))
    async with contextlib.AsyncExitStack() as stack:
        sim = await stack.enter_async_context(serve(sim_settings))
        member = await stack.enter_async_context(
            member_bootstrap(MemberSettings(database_url=member_db, **common))
        )
        await stack.enter_async_context(running(member))
        points = await stack.enter_async_context(
            points_bootstrap(PointsSettings(database_url=points_db, **common))
        )
        await stack.enter_async_context(running(points, ("serve",)))
        coupons = await stack.enter_async_context(
            coupons_bootstrap(CouponsSettings(database_url=coupons_db, **common))
        )
        await stack.enter_async_context(running(coupons, ("serve",)))
        coupons_port = await _port(lambda: coupons.grpc.port if coupons.grpc else 0)
        parking = await stack.enter_async_context(
            parking_bootstrap(
                ParkingSettings(database_url=parking_db, points_grpc_target="", **common)
            )
        )
        await stack.enter_async_context(running(parking, ("serve",)))
        parking_port = await _port(lambda: parking.grpc.port if parking.grpc else 0)
        member_port = await _port(lambda: member.grpc.port if member.grpc else 0)
        points_port = await _port(lambda: points.grpc.port if points.grpc else 0)
        await seed(f"127.0.0.1:{member_port}", mall)
        gateway = await stack.enter_async_context(
            gateway_bootstrap(
                GatewaySettings(
                    nats_url=nats_url,
                    http_port=0,
                    member_grpc_target=f"127.0.0.1:{member_port}",
                    points_grpc_target=f"127.0.0.1:{points_port}",
                    coupons_grpc_target=f"127.0.0.1:{coupons_port}",
                    parking_grpc_target=f"127.0.0.1:{parking_port}",
                    wechat_api_base=sim.url,
                    miniprogram_secrets_file=folder / "miniprograms.json",
                    session_signing_key=secrets.token_urlsafe(48),  # type: ignore[arg-type]
                    rate_limit_per_ip="",  # off: test_rate_limits_* prove them
                    rate_limit_per_member="",
                    log_format="console",
                    log_level="error",
                )
            )
        )
        await stack.enter_async_context(running(gateway))
        url = f"http://127.0.0.1:{await _port(lambda: gateway.http.port)}"
        for _ in range(500):
            if gateway.http.app[SHOPPERS].malls.mall_for_appid(mall.appid):
                break
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as http:  # a member's session, as the app gets it
            body = {"appid": mall.appid, "openid": f"o-{uuid.uuid4().hex}"}
            async with http.post(f"{sim.url}/control/login-codes", json=body) as resp:
                code = (await resp.json())["code"]
            async with http.post(
                f"{url}/v1/session", json={"appid": mall.appid, "code": code}
            ) as r:
                login = await r.json()
            phone = {"phone": f"+86137{secrets.randbelow(10**8):08d}"}
            headers = {"Authorization": f"Bearer {login['access_token']}"}
            async with http.post(f"{url}/v1/me/join", json=phone, headers=headers) as r:
                assert r.status == 201, await r.text()
                token = (await r.json())["access_token"]
        yield Live(url, token)


@pytest.fixture(scope="module")
def live(
    fresh_database: FreshDatabase, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """The stack, serving from a thread of its own until the module is done."""
    ready: list[Live] = []
    failed: list[BaseException] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    folder = tmp_path_factory.mktemp("gateway-openapi")

    async def main() -> None:
        try:
            member_db, points_db = await fresh_database("member"), await fresh_database("points")
            coupons_db = await fresh_database("coupons")
            parking_db = await fresh_database("parking")
            async with _stack(
                member_db, points_db, nats_url, folder, coupons_db, parking_db
            ) as stack:
                ready.append(stack)
                started.set()
                await stop.wait()
        except BaseException as exc:
            failed.append(exc)
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(60)
    if failed:
        raise failed[0]
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


#: The document the gateway serves (test_the_served_spec_is_this_one checks it is): loaded at
#: import, as schemathesis' lazy fixture loader does not run on this pytest.
SPEC = document(operations(shopper_api=True))
schema = schemathesis.openapi.from_dict(SPEC).exclude(
    path="/v1/me/events"  # a stream that stays open: checked in test_gateway_shoppers
)

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    # Schema-valid requests are accepted. (Not negative_data_rejection: unknown query
    # parameters are ignored on purpose, e.g. a mini-program's cache-buster, or a member id
    # that must not matter: the member comes from the token.)
    checks.positive_data_acceptance,
]


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_answer_is_what_the_spec_says(case: schemathesis.Case[Any], live: Live) -> None:
    case.call_and_validate(
        base_url=live.url,
        headers={"Authorization": f"Bearer {live.token}"},
        checks=CHECKS,
        timeout=10,
    )


def test_the_spec_is_openapi_3_1_with_problem_codes_for_every_error() -> None:
    spec = document(operations(accept_unsigned=True, shopper_api=True))

    assert spec["openapi"] == "3.1.0"
    card = spec["paths"]["/v1/me/card"]["get"]
    assert card["security"] == [{"bearer": []}]
    assert card["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Card"
    }
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            for status, response in op["responses"].items():
                if int(status) >= 400 and not path.startswith(("/wechatpay/", "/readyz")):
                    assert "application/problem+json" in response["content"], (path, method)
                    assert response["description"].startswith("code: "), (path, method)
    limited = spec["paths"]["/v1/me/points/ledger"]["get"]["responses"]["429"]
    assert limited["headers"]["Retry-After"]["required"] is True
    schemas = spec["components"]["schemas"]
    assert {"Card", "LedgerPage", "Problem", "CreateSessionBody"} <= set(schemas)


async def test_docs_and_spec_are_served(live: Live) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/docs") as resp:
            page = await resp.text()
            assert (resp.status, resp.content_type) == (200, "text/html")
        async with http.get(f"{live.url}/openapi.json") as resp:
            spec = await resp.json()
    assert spec == SPEC  # what the fuzzing run generated from is what is served
    assert "GET /v1/me/card" in page
    assert "<script" not in page  # no CDN, nothing to fetch
    assert "https://cdn" not in page


# -- rate limits (the fuzzing run has them off) -----------------------------------------------


@web.middleware
async def _as_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stands in for shopper_session: the shopper named by a test header."""
    if shopper := request.headers.get("X-Test-Shopper"):
        request[SESSION] = Session("mall-1", shopper)
    return await handler(request)


@pytest.fixture
async def limited() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    throttle = Throttle(RateLimits(per_ip="5/minute", per_member="2/minute"))

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(
        middlewares=[request_context, throttle.by_address, _as_session, throttle.by_member]
    )
    for path in ("/v1/me/card", "/healthz", "/wechatpay/notifications/1"):
        app.router.add_get(path, ok)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_rate_limits_per_member_then_per_address_answer_429_with_retry_after(
    limited: TestClient[web.Request, web.Application],
) -> None:
    a, b = {"X-Test-Shopper": "a"}, {"X-Test-Shopper": "b"}
    statuses = [(await limited.get("/v1/me/card", headers=a)).status for _ in range(3)]
    assert statuses == [200, 200, 429]  # member a: 2 a minute
    refused = await limited.get("/v1/me/card", headers=a)
    problem = await refused.json(content_type="application/problem+json")
    assert (refused.status, problem["code"]) == (429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60

    assert (await limited.get("/v1/me/card", headers=b)).status == 200  # b has its own count
    # The address has made 5 requests now (a minute's worth): everyone from it waits.
    refused = await limited.get("/v1/me/card", headers={"X-Test-Shopper": "c"})
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1
    # Probes and WeChat Pay's webhooks are never limited.
    assert (await limited.get("/healthz")).status == 200
    assert (await limited.get("/wechatpay/notifications/1")).status == 200


async def test_behind_a_proxy_the_forwarded_client_is_counted() -> None:
    throttle = Throttle(RateLimits(per_ip="1/minute", client_header="X-Forwarded-For"))

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[request_context, throttle.by_address])
    app.router.add_get("/v1/me/card", ok)
    async with TestClient(TestServer(app)) as client:

        async def get(forwarded: str) -> int:
            resp = await client.get("/v1/me/card", headers={"X-Forwarded-For": forwarded})
            return resp.status

        assert await get("203.0.113.7") == 200
        assert await get("203.0.113.8") == 200  # another shopper through the same ingress
        assert await get("198.51.100.1, 203.0.113.7") == 429  # the proxy's entry counts
