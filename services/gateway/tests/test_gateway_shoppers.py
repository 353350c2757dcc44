"""The mini-program's API through the real gateway: WeChat login (the simulator's
code-to-session), sessions that rotate, the shopper's own card, points and checkout code, and
"+N points" pushed live over SSE — with the real member and points services, PostgreSQL and NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import nats
import pytest
from gateway.adapters.live import CREDITED, REVERSED
from gateway.adapters.tokens import SessionTokens
from gateway.bootstrap import bootstrap as gateway_bootstrap
from gateway.config import Settings as GatewaySettings
from gateway.domain.shoppers import Session
from gateway.entrypoints.app import HttpServer
from gateway.entrypoints.keys import SHOPPERS
from gateway.service_layer.live import LiveHub
from kit.cli import Roles, running
from kit.migrations import migrate
from mall.points.v1 import events_pb2
from mall_testing.demo import DemoMall, seed
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from member.bootstrap import bootstrap as member_bootstrap
from member.config import Settings as MemberSettings
from nats.aio.client import Client as NatsClient
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.bootstrap import bootstrap as points_bootstrap
from points.config import Settings as PointsSettings
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import MiniProgram
from wechatpay_simulator.config import Settings as SimulatorSettings

PROBLEM = "application/problem+json"


@dataclass
class Stack:
    url: str
    http: aiohttp.ClientSession
    sim: Running
    nc: NatsClient
    mall: DemoMall
    gateway: Roles
    signing_key: str

    @property
    def hub(self) -> LiveHub:
        server: HttpServer = self.gateway.http
        return server.app[SHOPPERS].hub

    async def code(self, openid: str, appid: str | None = None) -> str:
        body = {"appid": appid or self.mall.appid, "openid": openid}
        async with self.http.post(f"{self.sim.url}/control/login-codes", json=body) as resp:
            assert resp.status == 200, await resp.text()
            code: str = (await resp.json())["code"]
            return code

    async def call(
        self, method: str, path: str, *, token: str | None = None, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 400:
                assert resp.content_type == PROBLEM
            return resp.status, data

    async def login(self, openid: str) -> dict[str, Any]:
        code = await self.code(openid)
        status, body = await self.call(
            "POST", "/v1/session", body={"appid": self.mall.appid, "code": code}
        )
        assert status == 200, body
        return body

    async def member(self, openid: str) -> tuple[str, str]:
        """Log in and join; (access token with the member id, member id)."""
        session = await self.login(openid)
        status, joined = await self.call(
            "POST", "/v1/me/join", token=session["access_token"], body={"phone": new_phone()}
        )
        assert status == 201, joined
        return joined["access_token"], joined["member"]["member_id"]


async def _port(get: Any) -> int:
    for _ in range(500):
        if port := get():
            return int(port)
        await asyncio.sleep(0.01)
    raise RuntimeError("a server never bound its port")


@pytest.fixture(scope="module")
async def stack(
    fresh_database: FreshDatabase, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    member_db, points_db = await fresh_database("member"), await fresh_database("points")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    common: dict[str, Any] = {
        "nats_url": nats_url, "grpc_port": 0, "log_format": "console", "log_level": "warning"
    }  # fmt: skip
    mall = DemoMall.unique()
    secret = secrets.token_hex(16)
    folder: Path = tmp_path_factory.mktemp("gateway-login")
    (folder / "miniprograms.json").write_text(json.dumps({mall.appid: secret}))
    signing_key = secrets.token_urlsafe(48)
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
                    wechat_api_base=sim.url,
                    miniprogram_secrets_file=folder / "miniprograms.json",
                    session_signing_key=signing_key,  # type: ignore[arg-type]
                    sse_heartbeat_s=0.1,
                    rate_limit_per_ip="",  # off here: test_gateway_openapi proves the limits
                    rate_limit_per_member="",
                    log_format="console",
                    log_level="warning",
                )
            )
        )
        await stack.enter_async_context(running(gateway))
        http_port = await _port(lambda: gateway.http.port)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        nc = await nats.connect(nats_url)
        stack.push_async_callback(nc.close)
        shoppers = Stack(f"http://127.0.0.1:{http_port}", http, sim, nc, mall, gateway, signing_key)
        # The gateway's directory copy learns the mall from member's DIRECTORY bucket.
        for _ in range(500):
            if gateway.http.app[SHOPPERS].malls.mall_for_appid(mall.appid):
                break
            await asyncio.sleep(0.01)
        yield shoppers


def openid() -> str:
    return f"o-{uuid.uuid4().hex}"


def new_phone() -> str:
    return f"+86138{secrets.randbelow(10**8):08d}"


# -- login ---------------------------------------------------------------------------------


async def test_login_with_a_wx_login_code_gives_a_session_for_the_mall(stack: Stack) -> None:
    shopper = openid()

    body = await stack.login(shopper)

    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 7200
    assert body["refresh_expires_in"] == 30 * 86_400
    assert body["member"] is None  # not a member yet: fine
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert (claims["mall"], claims["sub"], claims["typ"]) == (stack.mall.mall_id, shopper, "access")
    assert "mid" not in claims
    status, problem = await stack.call("GET", "/v1/me", token=body["access_token"])
    assert (status, problem["code"]) == (404, "not_a_member")


async def test_an_invalid_or_used_login_code_is_refused(stack: Stack) -> None:
    status, problem = await stack.call(
        "POST", "/v1/session", body={"appid": stack.mall.appid, "code": "made-up"}
    )
    assert (status, problem["code"]) == (401, "invalid_login_code")

    code = await stack.code(openid())
    body = {"appid": stack.mall.appid, "code": code}
    assert (await stack.call("POST", "/v1/session", body=body))[0] == 200
    status, problem = await stack.call("POST", "/v1/session", body=body)
    assert (status, problem["code"]) == (401, "invalid_login_code")


async def test_a_mini_program_that_is_no_mall_is_unknown(stack: Stack) -> None:
    status, problem = await stack.call(
        "POST", "/v1/session", body={"appid": "wx0000nobody0000", "code": "any"}
    )

    assert (status, problem["code"]) == (404, "unknown_miniprogram")


async def test_wechat_failing_is_a_bad_gateway(stack: Stack) -> None:
    code = await stack.code(openid())
    async with stack.http.post(
        f"{stack.sim.url}/control/faults", json={"jscode2session": {"fail_next": 1}}
    ) as resp:
        assert resp.status == 200

    body = {"appid": stack.mall.appid, "code": code}
    status, problem = await stack.call("POST", "/v1/session", body=body)
    assert (status, problem["code"]) == (502, "wechat_unavailable")
    assert (await stack.call("POST", "/v1/session", body=body))[0] == 200  # the code still works


@pytest.mark.parametrize(
    "body", [None, [], {"appid": "wx1"}, {"code": "c"}, {"appid": "wx 1", "code": "c"}]
)
async def test_a_malformed_login_is_refused(stack: Stack, body: Any) -> None:
    status, problem = await stack.call("POST", "/v1/session", body=body)

    assert status == 400
    assert problem["code"].startswith("invalid_")


# -- tokens ----------------------------------------------------------------------------------


async def test_tampered_forged_expired_or_missing_tokens_are_refused(stack: Stack) -> None:
    token, _ = await stack.member(openid())
    head, payload, signature = token.split(".")
    tampered = f"{head}.{payload}.{signature[:-4]}AAAA"
    forged = SessionTokens("x" * 32, access_ttl_s=60, refresh_ttl_s=600).issue(
        Session(stack.mall.mall_id, openid())
    )
    expired = SessionTokens(
        stack.signing_key, access_ttl_s=60, refresh_ttl_s=600, clock=lambda: 1_000_000.0
    ).issue(Session(stack.mall.mall_id, openid()))
    login = await stack.login(openid())

    for bad in (tampered, forged.access_token, expired.access_token, login["refresh_token"], "x"):
        status, problem = await stack.call("GET", "/v1/me", token=bad)
        assert (status, problem["code"]) == (401, "invalid_session"), bad
    async with stack.http.get(stack.url + "/v1/me/points") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await stack.call("GET", "/v1/me", token=token))[0] == 200


async def test_refresh_tokens_rotate_and_a_used_one_is_refused(stack: Stack) -> None:
    first = await stack.login(openid())

    status, second = await stack.call(
        "POST", "/v1/session/refresh", body={"refresh_token": first["refresh_token"]}
    )
    assert status == 200
    assert second["refresh_token"] != first["refresh_token"]
    status, problem = await stack.call(
        "POST", "/v1/session/refresh", body={"refresh_token": first["refresh_token"]}
    )
    assert (status, problem["code"]) == (401, "refresh_token_reused")
    status, problem = await stack.call(
        "POST", "/v1/session/refresh", body={"refresh_token": first["access_token"]}
    )
    assert (status, problem["code"]) == (401, "invalid_session")
    status, third = await stack.call(
        "POST", "/v1/session/refresh", body={"refresh_token": second["refresh_token"]}
    )
    assert status == 200
    assert (await stack.call("GET", "/v1/me/points", token=third["access_token"]))[0] == 404


# -- the shopper's own data ------------------------------------------------------------------


async def test_join_then_card_points_and_checkout_code(stack: Stack) -> None:
    shopper = openid()
    session = await stack.login(shopper)
    phone = new_phone()

    status, joined = await stack.call(
        "POST", "/v1/me/join", token=session["access_token"], body={"phone": phone}
    )
    assert status == 201
    member_id = joined["member"]["member_id"]
    assert joined["member"]["mall_id"] == stack.mall.mall_id
    claims = jwt.decode(joined["access_token"], options={"verify_signature": False})
    assert claims["mid"] == member_id
    token = joined["access_token"]

    status, card = await stack.call("GET", "/v1/me", token=token)
    assert status == 200
    assert card["member_id"] == member_id
    assert card["tier_code"] == joined["member"]["tier_code"]
    # The join answers the whole profile (member's lookups do not carry these yet).
    assert joined["member"]["joined_at"]
    assert joined["member"]["phone_masked"].endswith(phone[-4:])
    status, points = await stack.call("GET", "/v1/me/points", token=token)
    assert status == 200
    assert (points["member_id"], points["balance"], points["ledger"]) == (member_id, 0, [])
    status, checkout = await stack.call("GET", "/v1/me/checkout-code", token=token)
    assert status == 200
    assert checkout["code"]
    assert checkout["expires_at"]
    # Joining again is not an error; logging in again finds the member.
    status, problem = await stack.call("POST", "/v1/me/join", token=token, body={})
    assert (status, problem["code"]) == (400, "invalid_phone")
    status, again = await stack.call("POST", "/v1/me/join", token=token, body={"phone": phone})
    assert (status, again["member"]["member_id"], again["created"]) == (200, member_id, False)
    assert (await stack.login(shopper))["member"]["member_id"] == member_id


async def test_a_session_without_a_member_sees_no_points_or_code(stack: Stack) -> None:
    token = (await stack.login(openid()))["access_token"]

    for path in ("/v1/me", "/v1/me/points", "/v1/me/checkout-code"):
        status, problem = await stack.call("GET", path, token=token)
        assert (status, problem["code"]) == (404, "not_a_member"), path


async def test_a_shopper_only_ever_sees_their_own_data(stack: Stack) -> None:
    token_a, member_a = await stack.member(openid())
    shopper_b = openid()
    _, member_b = await stack.member(shopper_b)

    for path in (
        "/v1/me",
        f"/v1/me?member_id={member_b}",
        f"/v1/me/points?member_id={member_b}&openid={shopper_b}",
    ):
        status, body = await stack.call("GET", path, token=token_a)
        assert status == 200
        assert body["member_id"] == member_a
        assert member_b not in json.dumps(body)
    # No route takes a member or an openid: the old public points route is gone.
    status, _ = await stack.call(
        "GET", f"/v1/malls/{stack.mall.mall_id}/shoppers/{shopper_b}/points", token=token_a
    )
    assert status == 404


async def test_a_token_of_another_mall_finds_nothing_here(stack: Stack) -> None:
    """The token's mall is the only mall a request reaches: a token for mall B, even with
    member A's id in it, never shows member A."""
    _, member_a = await stack.member(openid())
    other_mall = SessionTokens(stack.signing_key, access_ttl_s=60, refresh_ttl_s=600).issue(
        Session("mall-elsewhere", openid(), member_a)
    )

    status, problem = await stack.call("GET", "/v1/me", token=other_mall.access_token)
    assert (status, problem["code"]) == (404, "not_a_member")


# -- live updates ----------------------------------------------------------------------------


@dataclass
class SseEvent:
    event: str
    data: dict[str, Any]


async def next_event(resp: aiohttp.ClientResponse) -> SseEvent:
    event, data = "message", []
    async with asyncio.timeout(5):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\r\n")
            if line.startswith(":"):
                continue  # heartbeat
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
            elif line == "" and data:
                return SseEvent(event, json.loads("\n".join(data)))


async def publish_credit(
    stack: Stack, member_id: str, points: int, balance: int, *, mall_id: str | None = None
) -> str:
    transaction_id = f"tx-{uuid.uuid4().hex}"
    event = events_pb2.PointsCredited(
        event_id=uuid.uuid4().hex,
        mall_id=mall_id or stack.mall.mall_id,
        member_id=member_id,
        transaction_id=transaction_id,
        points=points,
        balance_after=balance,
    )
    await stack.nc.publish(CREDITED, event.SerializeToString())
    await stack.nc.flush()
    return transaction_id


async def test_points_are_pushed_to_the_paying_member_only(stack: Stack) -> None:
    token_a, member_a = await stack.member(openid())
    token_b, member_b = await stack.member(openid())

    async with (
        stack.http.get(
            stack.url + "/v1/me/events", headers={"Authorization": f"Bearer {token_a}"}
        ) as stream_a,
        # EventSource cannot set headers: the token may come in the query instead.
        stack.http.get(stack.url + "/v1/me/events", params={"access_token": token_b}) as stream_b,
    ):
        assert stream_a.status == stream_b.status == 200
        assert stream_a.content_type == "text/event-stream"
        assert (await next_event(stream_a)).event == "ready"
        assert (await next_event(stream_b)).event == "ready"

        # Same member id in another mall: not this mall's member A.
        await publish_credit(stack, member_a, 99, 99, mall_id="mall-elsewhere")
        transaction_id = await publish_credit(stack, member_a, 120, 120)
        got = await next_event(stream_a)
        assert got.event == "points"
        assert got.data == {
            "type": "points.credited",
            "points": 120,
            "balance": 120,
            "transaction_id": transaction_id,
        }

        reversal = events_pb2.PointsReversed(
            mall_id=stack.mall.mall_id,
            member_id=member_b,
            transaction_id="tx-b",
            refund_id="rf-b",
            points=30,
            balance_after=10,
        )
        await stack.nc.publish(REVERSED, reversal.SerializeToString())
        # B's first event is B's own reversal: nothing of A's reached B's stream.
        got_b = await next_event(stream_b)
        assert got_b.data["type"] == "points.reversed"
        assert (got_b.data["points"], got_b.data["balance"]) == (-30, 10)


async def test_the_event_stream_needs_a_session_and_a_member(stack: Stack) -> None:
    async with stack.http.get(stack.url + "/v1/me/events?access_token=forged") as resp:
        assert resp.status == 401
    token = (await stack.login(openid()))["access_token"]
    async with stack.http.get(stack.url + "/v1/me/events", params={"access_token": token}) as resp:
        assert resp.status == 404
    # Only the event stream takes the token from the query.
    status, _ = await stack.call("GET", f"/v1/me?access_token={token}")
    assert status == 401


async def test_a_client_that_leaves_is_cleaned_up(stack: Stack) -> None:
    token, member_id = await stack.member(openid())
    mall_id = stack.mall.mall_id

    resp = await stack.http.get(
        stack.url + "/v1/me/events", headers={"Authorization": f"Bearer {token}"}
    )
    assert (await next_event(resp)).event == "ready"
    assert stack.hub.streams(mall_id, member_id) == 1
    resp.close()  # the shopper closes the mini-program

    for _ in range(300):  # found by the next heartbeat (0.1 s here, 15 s by default)
        if stack.hub.streams(mall_id, member_id) == 0:
            break
        await asyncio.sleep(0.01)
    assert stack.hub.streams(mall_id, member_id) == 0
    await publish_credit(stack, member_id, 5, 5)  # nobody to deliver to: nothing breaks
