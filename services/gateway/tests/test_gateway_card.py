"""The member card (``GET /v1/me/card``) and the ledger (``GET /v1/me/points/ledger``) through
the real gateway, with real member and points services (points' API server can be stopped and
started again), real PostgreSQL and NATS; and the card reader's coalescing and cache alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from gateway.adapters.tokens import SessionTokens
from gateway.bootstrap import bootstrap as gateway_bootstrap
from gateway.config import Settings as GatewaySettings
from gateway.domain.card import Card
from gateway.domain.shoppers import Session
from gateway.entrypoints.keys import SHOPPERS
from gateway.service_layer.card import CardReader, SectionSource
from kit.cli import Roles, running
from kit.errors import NotFound, Unauthenticated, Unavailable
from kit.migrations import migrate
from mall.member.v1 import events_pb2 as member_events
from mall_testing.demo import DemoMall, payment_notification, seed
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from member.bootstrap import bootstrap as member_bootstrap
from member.config import Settings as MemberSettings
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.bootstrap import bootstrap as points_bootstrap
from points.config import Settings as PointsSettings
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import MiniProgram
from wechatpay_simulator.config import Settings as SimulatorSettings

PROBLEM = "application/problem+json"


async def _port(get: Any) -> int:
    for _ in range(500):
        if port := get():
            return int(port)
        await asyncio.sleep(0.01)
    raise RuntimeError("a server never bound its port")


@dataclass
class Stack:
    url: str
    http: aiohttp.ClientSession
    sim: Running
    mall: DemoMall
    gateway: Roles
    signing_key: str
    points_settings: PointsSettings
    nc: NatsClient
    #: (mall, member) of every card the gateway's live feed told the reader to forget.
    invalidated: set[tuple[str, str]]
    forgotten: asyncio.Event  # set at each of those
    points_api: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def cards(self) -> CardReader:
        return self.gateway.http.app[SHOPPERS].cards  # type: ignore[no-any-return]

    async def start_points_api(self) -> None:
        """points' gRPC API on its port (the same one each time: the gateway dials it)."""
        roles = await self.points_api.enter_async_context(points_bootstrap(self.points_settings))
        await self.points_api.enter_async_context(running(roles, ("serve",)))
        await _port(lambda: roles.grpc.port if roles.grpc else 0)

    async def stop_points_api(self) -> None:
        await self.points_api.aclose()
        self.points_api = contextlib.AsyncExitStack()

    async def call(
        self, method: str, path: str, *, token: str | None = None, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 400:
                assert resp.content_type == PROBLEM
            return resp.status, data

    async def member(self, openid: str) -> tuple[str, str]:
        """Log in and join; (access token with the member id, member id)."""
        body = {"appid": self.mall.appid, "openid": openid}
        async with self.http.post(f"{self.sim.url}/control/login-codes", json=body) as resp:
            code = (await resp.json())["code"]
        status, session = await self.call(
            "POST", "/v1/session", body={"appid": self.mall.appid, "code": code}
        )
        assert status == 200, session
        phone = f"+86139{secrets.randbelow(10**8):08d}"
        status, joined = await self.call(
            "POST", "/v1/me/join", token=session["access_token"], body={"phone": phone}
        )
        assert status == 201, joined
        return joined["access_token"], joined["member"]["member_id"]

    async def settled_member(self, openid: str) -> tuple[str, str]:
        """``member``, once the gateway has heard member.member.joined for them (so that event
        no longer invalidates their card in the middle of a test)."""
        joined: asyncio.Queue[str] = asyncio.Queue()

        async def on_joined(msg: Msg) -> None:
            await joined.put(member_events.MemberJoined.FromString(msg.data).member_id)

        sub = await self.nc.subscribe("member.member.joined", cb=on_joined)
        try:
            token, member_id = await self.member(openid)
            async with asyncio.timeout(10):
                while await joined.get() != member_id:
                    pass
                # The gateway hears the event on a connection of its own, maybe later.
                while (self.mall.mall_id, member_id) not in self.invalidated:
                    self.forgotten.clear()
                    await self.forgotten.wait()
        finally:
            await sub.unsubscribe()
        return token, member_id

    async def pay(self, openid: str, amount_fen: int) -> None:
        body = payment_notification(self.mall, openid=openid, amount_fen=amount_fen)
        async with self.http.post(self.url + "/wechatpay/notifications", json=body) as resp:
            assert resp.status == 204, await resp.text()


@pytest.fixture(scope="module")
async def stack(
    fresh_database: FreshDatabase, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    member_db, points_db = await fresh_database("member"), await fresh_database("points")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    common: dict[str, Any] = {
        "nats_url": nats_url, "log_format": "console", "log_level": "warning"
    }  # fmt: skip
    mall = DemoMall.unique()
    secret = secrets.token_hex(16)
    folder: Path = tmp_path_factory.mktemp("gateway-card")
    (folder / "miniprograms.json").write_text(json.dumps({mall.appid: secret}))
    signing_key = secrets.token_urlsafe(48)
    sim_settings = SimulatorSettings.create(miniprograms=(MiniProgram(mall.appid, secret),))
    invalidated: set[tuple[str, str]] = set()
    forgotten = asyncio.Event()
    forget = CardReader.invalidate

    def recorded(reader: CardReader, mall_id: str, member_id: str) -> None:
        forget(reader, mall_id, member_id)
        invalidated.add((mall_id, member_id))
        forgotten.set()

    async with contextlib.AsyncExitStack() as stack:
        # The gateway's reader is built with this in place; the real one still does the work.
        stack.enter_context(pytest.MonkeyPatch.context()).setattr(
            CardReader, "invalidate", recorded
        )
        sim = await stack.enter_async_context(serve(sim_settings))
        member = await stack.enter_async_context(
            member_bootstrap(MemberSettings(database_url=member_db, grpc_port=0, **common))
        )
        await stack.enter_async_context(running(member))
        member_port = await _port(lambda: member.grpc.port if member.grpc else 0)
        # points' consumers and relay run throughout; its API server is started separately.
        points = await stack.enter_async_context(
            points_bootstrap(PointsSettings(database_url=points_db, grpc_port=0, **common))
        )
        await stack.enter_async_context(running(points, ("relay", "consume")))
        probe = await stack.enter_async_context(
            points_bootstrap(PointsSettings(database_url=points_db, grpc_port=0, **common))
        )  # only to find a free port for the API server the tests stop and start
        async with running(probe, ("serve",)):
            points_port = await _port(lambda: probe.grpc.port if probe.grpc else 0)
        await seed(f"127.0.0.1:{member_port}", mall)
        gateway = await stack.enter_async_context(
            gateway_bootstrap(
                GatewaySettings(
                    nats_url=nats_url,
                    http_port=0,
                    member_grpc_target=f"127.0.0.1:{member_port}",
                    points_grpc_target=f"127.0.0.1:{points_port}",
                    wechat_api_base=sim.url,
                    wechatpay_accept_unsigned=True,
                    miniprogram_secrets_file=folder / "miniprograms.json",
                    session_signing_key=signing_key,  # type: ignore[arg-type]
                    sse_heartbeat_s=0.1,
                    # Long enough that only an invalidation can explain a fresh card.
                    card_ttl_s=300,
                    card_degraded_ttl_s=0.05,
                    card_section_deadline_s=2.0,
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
        points_settings = PointsSettings(database_url=points_db, grpc_port=points_port, **common)
        card_stack = Stack(
            f"http://127.0.0.1:{http_port}",
            http,
            sim,
            mall,
            gateway,
            signing_key,
            points_settings,
            nc,
            invalidated,
            forgotten,
        )
        await card_stack.start_points_api()
        stack.push_async_callback(lambda: card_stack.points_api.aclose())
        for _ in range(500):
            if gateway.http.app[SHOPPERS].malls.mall_for_appid(mall.appid):
                break
            await asyncio.sleep(0.01)
        yield card_stack


def openid() -> str:
    return f"o-{uuid.uuid4().hex}"


async def next_event(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    kind, data, _ = await next_event_with_id(resp)
    return kind, data


async def next_event_with_id(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any], str]:
    event, data, event_id = "message", [], ""
    async with asyncio.timeout(10):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\r\n")
            if line.startswith(":"):
                continue
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("id:"):
                event_id = line.removeprefix("id:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
            elif line == "" and data:
                return event, json.loads("\n".join(data)), event_id


# -- the card through the gateway --------------------------------------------------------------


async def test_the_card_shows_tier_and_points_and_sections_not_connected_yet(
    stack: Stack,
) -> None:
    token, member_id = await stack.member(openid())

    status, card = await stack.call("GET", "/v1/me/card", token=token)

    assert status == 200
    assert (card["mall_id"], card["member_id"]) == (stack.mall.mall_id, member_id)
    assert card["member"]["status"] == "ok"
    assert card["member"]["tier_code"]
    assert card["points"] == {
        "status": "ok",
        "balance": 0,
        "available": 0,
        "expiring_soon": None,
    }
    not_connected = {"status": "unavailable", "reason": "not_connected"}
    assert card["coupons"] == card["parking"] == not_connected
    assert card["built_at"].endswith("Z")


async def test_a_payment_shows_in_the_card_as_soon_as_its_sse_event_arrives(
    stack: Stack,
) -> None:
    shopper = openid()
    token, _ = await stack.member(shopper)
    status, before = await stack.call("GET", "/v1/me/card", token=token)
    assert (status, before["points"]["balance"]) == (200, 0)  # now cached for 300 s

    async with stack.http.get(
        stack.url + "/v1/me/events", headers={"Authorization": f"Bearer {token}"}
    ) as events:
        assert (await next_event(events))[0] == "ready"
        await stack.pay(shopper, 45_600)
        kind, pushed = await next_event(events)
        assert (kind, pushed["type"], pushed["points"]) == ("points", "points.credited", 456)

        status, after = await stack.call("GET", "/v1/me/card", token=token)

    assert status == 200
    assert after["points"]["balance"] == pushed["balance"] == 456
    assert after["points"]["expiring_soon"]["points"] == 456  # the payment's lot
    assert after["points"]["expiring_soon"]["expires_at"] > after["built_at"]
    assert after["built_at"] > before["built_at"]


async def test_concurrent_reads_of_one_member_share_one_fan_out(stack: Stack) -> None:
    token, _ = await stack.settled_member(openid())
    fanouts = stack.cards.fanouts

    answers = await asyncio.gather(
        *(stack.call("GET", "/v1/me/card", token=token) for _ in range(20))
    )

    assert {status for status, _ in answers} == {200}
    assert len({json.dumps(card, sort_keys=True) for _, card in answers}) == 1
    assert stack.cards.fanouts == fanouts + 1
    hits = stack.cards.hits
    again = await stack.call("GET", "/v1/me/card", token=token)
    assert stack.cards.hits == hits + 1  # from memory: nothing changed for this member
    assert again == answers[0]


async def test_with_points_down_the_card_answers_with_points_unavailable(stack: Stack) -> None:
    await stack.stop_points_api()
    try:
        token, member_id = await stack.member(openid())  # joining needs only member

        status, card = await stack.call("GET", "/v1/me/card", token=token)

        assert status == 200
        assert card["member_id"] == member_id
        assert card["member"]["status"] == "ok"
        assert card["points"] == {"status": "unavailable", "reason": "error"}
        status, problem = await stack.call("GET", "/v1/me/points/ledger", token=token)
        assert (status, problem["code"]) == (503, "upstream_unavailable")
        # Readiness says so, without taking the gateway out (payments only need NATS).
        status, ready = await stack.call("GET", "/readyz")
        assert (status, ready["status"]) == (200, "ready")
        assert ready["backends"] == {"member": "reachable", "points": "unreachable"}
    finally:
        await stack.start_points_api()
    for _ in range(200):
        status, ready = await stack.call("GET", "/readyz")
        if ready["backends"]["points"] == "reachable":
            break
        await asyncio.sleep(0.05)
    assert ready["backends"] == {"member": "reachable", "points": "reachable"}
    # A degraded card is kept only briefly: points is back on the next reads.
    for _ in range(200):
        status, card = await stack.call("GET", "/v1/me/card", token=token)
        if card["points"]["status"] == "ok":
            break
        await asyncio.sleep(0.05)
    assert card["points"]["balance"] == 0


async def test_a_card_for_a_token_of_another_mall_is_not_found(stack: Stack) -> None:
    _, member_a = await stack.member(openid())
    other_mall = SessionTokens(stack.signing_key, access_ttl_s=60, refresh_ttl_s=600).issue(
        Session("mall-elsewhere", openid(), member_a)
    )

    status, problem = await stack.call("GET", "/v1/me/card", token=other_mall.access_token)

    assert (status, problem["code"]) == (404, "not_a_member")
    assert member_a not in json.dumps(problem)


# -- live events: resuming after a reconnect ------------------------------------------------


async def test_a_reconnect_with_last_event_id_gets_the_points_it_missed(stack: Stack) -> None:
    shopper = openid()
    token, _ = await stack.member(shopper)
    auth = {"Authorization": f"Bearer {token}"}

    async with stack.http.get(stack.url + "/v1/me/events", headers=auth) as events:
        kind, ready, ready_id = await next_event_with_id(events)
        assert (kind, ready["resumed"], bool(ready_id)) == ("ready", False, True)
        await stack.pay(shopper, 1_100)
        kind, first, last_id = await next_event_with_id(events)
        assert (kind, first["points"]) == ("points", 11)
    # Offline (the mini-program went to the background): two more payments.
    await stack.pay(shopper, 2_200)
    await stack.pay(shopper, 3_300)
    for _ in range(400):
        _, card = await stack.call("GET", "/v1/me/card", token=token)
        if card["points"]["balance"] == 66:
            break
        await asyncio.sleep(0.05)

    async with stack.http.get(
        stack.url + "/v1/me/events", headers={**auth, "Last-Event-ID": last_id}
    ) as events:
        kind, ready, _ = await next_event_with_id(events)
        assert (kind, ready["resumed"]) == ("ready", True)
        missed = [await next_event_with_id(events) for _ in range(2)]
        assert [(k, e["points"], e["balance"]) for k, e, _ in missed] == [
            ("points", 22, 33),
            ("points", 33, 66),
        ]
        assert missed[0][2] != missed[1][2]

    # An id this process never issued (another replica's, or before a restart): resync.
    async with stack.http.get(
        stack.url + "/v1/me/events", headers={**auth, "Last-Event-ID": "0badc0de-7"}
    ) as events:
        kind, ready, _ = await next_event_with_id(events)
        assert (kind, ready["resumed"]) == ("ready", False)
        assert (await next_event(events))[0] == "resync"


# -- access: the token is the only way in ---------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/me/card", "/v1/me/points/ledger", "/v1/me/events"])
async def test_forged_expired_refresh_or_missing_tokens_are_refused(
    stack: Stack, path: str
) -> None:
    session = Session(stack.mall.mall_id, openid(), str(uuid.uuid4()))
    forged = SessionTokens("f" * 32, access_ttl_s=60, refresh_ttl_s=600).issue(session)
    expired = SessionTokens(
        stack.signing_key, access_ttl_s=60, refresh_ttl_s=600, clock=lambda: time.time() - 3600
    ).issue(session)

    for bad in (forged.access_token, expired.access_token, expired.refresh_token, None):
        status, problem = await stack.call("GET", path, token=bad)
        assert (status, problem["code"]) == (401, "invalid_session"), bad
        assert str(session.member_id) not in json.dumps(problem)


async def test_a_spent_refresh_token_is_refused_and_prometheus_metrics_are_served(
    stack: Stack,
) -> None:
    token, _ = await stack.member(openid())
    await stack.call("GET", "/v1/me/card", token=token)
    body = {"appid": stack.mall.appid, "openid": openid()}
    async with stack.http.post(f"{stack.sim.url}/control/login-codes", json=body) as resp:
        code = (await resp.json())["code"]
    _, login = await stack.call(
        "POST", "/v1/session", body={"appid": stack.mall.appid, "code": code}
    )
    refresh = {"refresh_token": login["refresh_token"]}
    assert (await stack.call("POST", "/v1/session/refresh", body=refresh))[0] == 200

    status, problem = await stack.call("POST", "/v1/session/refresh", body=refresh)

    assert (status, problem["code"]) == (401, "refresh_token_reused")
    async with stack.http.get(stack.url + "/metrics") as resp:
        metrics = await resp.text()
    assert resp.status == 200
    assert 'mall_http_requests_total{route="/v1/me/card",status="200"}' in metrics
    assert "mall_gateway_card_reads_total" in metrics


# -- the ledger --------------------------------------------------------------------------------


async def test_the_ledger_pages_newest_first_by_cursor(stack: Stack) -> None:
    shopper = openid()
    token, _ = await stack.member(shopper)
    for amount in (1_000, 2_000, 3_000):
        await stack.pay(shopper, amount)
    for _ in range(400):
        status, card = await stack.call("GET", "/v1/me/points", token=token)
        if card["balance"] == 60:
            break
        await asyncio.sleep(0.05)
    assert card["balance"] == 60

    status, first = await stack.call("GET", "/v1/me/points/ledger?limit=2", token=token)
    assert status == 200
    assert [e["points"] for e in first["entries"]] == [30, 20]
    assert first["next_cursor"]
    status, second = await stack.call(
        "GET", f"/v1/me/points/ledger?limit=2&cursor={first['next_cursor']}", token=token
    )
    assert status == 200
    assert [e["points"] for e in second["entries"]] == [10]
    assert second["next_cursor"] is None
    ids = [e["entry_id"] for e in first["entries"] + second["entries"]]
    assert len(set(ids)) == 3


async def test_the_ledger_is_only_ever_the_sessions_own(stack: Stack) -> None:
    """Member A naming member B anywhere in the request still gets A's ledger, nothing of B."""
    token_a, _ = await stack.member(openid())
    shopper_b = openid()
    _, member_b = await stack.member(shopper_b)
    await stack.pay(shopper_b, 5_000)

    for query in (f"member_id={member_b}", f"openid={shopper_b}&mall_id=mall-elsewhere"):
        status, page = await stack.call("GET", f"/v1/me/points/ledger?{query}", token=token_a)
        assert (status, page) == (200, {"entries": [], "next_cursor": None})
    status, _ = await stack.call("GET", f"/v1/members/{member_b}/points/ledger", token=token_a)
    assert status == 404


@pytest.mark.parametrize(
    ("query", "code"),
    [("limit=0", "invalid_limit"), ("limit=x", "invalid_limit"), ("cursor=abc", "invalid_cursor")],
)
async def test_a_malformed_ledger_query_is_refused(stack: Stack, query: str, code: str) -> None:
    token, _ = await stack.member(openid())

    status, problem = await stack.call("GET", f"/v1/me/points/ledger?{query}", token=token)

    assert (status, problem["code"]) == (400, code)


async def test_a_body_over_the_limit_is_refused_before_it_is_read(stack: Stack) -> None:
    body = {"appid": stack.mall.appid, "code": "x" * (128 * 1024)}

    status, problem = await stack.call("POST", "/v1/session", body=body)

    assert (status, problem["code"]) == (413, "body_too_large")


# -- the card reader alone (fakes for the services) --------------------------------------------


@dataclass
class FakeSections:
    balance: int = 0
    calls: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set once a points call has read the balance and waits at the gate.
    waiting: asyncio.Event = field(default_factory=asyncio.Event)

    async def member(self, mall_id: str, member_id: str, deadline_s: float) -> dict[str, Any]:
        if member_id == "nobody":
            raise NotFound("not_a_member", "join first")
        return {"tier_code": "silver", "member_status": "active"}

    async def points(self, mall_id: str, member_id: str, deadline_s: float) -> dict[str, Any]:
        self.calls += 1
        balance = self.balance
        self.waiting.set()
        await self.gate.wait()
        return {"balance": balance, "available": balance, "expiring_soon": None}


def reader(fake: FakeSections, **kwargs: Any) -> CardReader:
    def render(card: Card) -> bytes:
        return json.dumps(card.as_json(built_at="t")).encode()

    return CardReader(
        [SectionSource("member", fake.member), SectionSource("points", fake.points, 1.0)],
        render,
        **kwargs,
    )


async def test_a_change_during_a_fan_out_is_never_hidden_by_it() -> None:
    fake = FakeSections(balance=10)
    cards = reader(fake, ttl_s=300)
    early = asyncio.create_task(cards.read("m", "a"))
    await fake.waiting.wait()  # the fan-out has read balance 10 and waits
    fake.balance = 25
    cards.invalidate("m", "a")  # "+15 points" announced while it was in flight
    fake.waiting.clear()
    late = asyncio.create_task(cards.read("m", "a"))
    await fake.waiting.wait()  # a second fan-out, not the stale one
    fake.gate.set()

    assert (await early).card.sections["points"].data == {
        "balance": 10,
        "available": 10,
        "expiring_soon": None,
    }
    assert (await late).card.sections["points"].data["balance"] == 25  # type: ignore[index]
    assert (await cards.read("m", "a")).card.sections["points"].data["balance"] == 25  # type: ignore[index]
    assert fake.calls == 2


async def test_a_section_past_its_deadline_is_unavailable_and_not_kept() -> None:
    fake = FakeSections()  # the gate stays shut: points never answers
    clock = [0.0]
    cards = reader(fake, ttl_s=300, degraded_ttl_s=1.0, clock=lambda: clock[0])
    cards._sources[1] = SectionSource("points", fake.points, 0.01)

    answer = await cards.read("m", "a")

    assert answer.card.sections["points"].as_json() == {
        "status": "unavailable",
        "reason": "timeout",
    }
    assert answer.card.sections["member"].as_json()["tier_code"] == "silver"
    assert await cards.read("m", "a") is answer  # kept for the degraded TTL ...
    clock[0] = 1.5
    fake.gate.set()
    assert (await cards.read("m", "a")).card.sections["points"].data is not None  # ... only


async def test_past_its_ttl_a_card_is_answered_at_once_while_one_fan_out_refreshes_it() -> None:
    fake = FakeSections(balance=10)
    fake.gate.set()
    clock = [0.0]
    cards = reader(fake, ttl_s=5, stale_s=30, clock=lambda: clock[0])
    first = await cards.read("m", "a")
    fake.balance = 12  # changed without an event reaching us (the TTL's case)

    clock[0] = 6.0  # past the TTL, within the stale window
    assert await cards.read("m", "a") is first  # at once; a refresh started
    assert await cards.read("m", "a") is first  # no second refresh: one is under way
    await asyncio.sleep(0.01)
    assert fake.calls == 2
    assert (await cards.read("m", "a")).card.sections["points"].data["balance"] == 12  # type: ignore[index]

    cards.invalidate("m", "a")  # an announced change is never answered stale
    fake.balance = 15
    assert (await cards.read("m", "a")).card.sections["points"].data["balance"] == 15  # type: ignore[index]
    clock[0] = 6.0 + 5 + 31  # past TTL and stale window: wait for a fresh one
    fake.balance = 16
    assert (await cards.read("m", "a")).card.sections["points"].data["balance"] == 16  # type: ignore[index]


async def test_stale_cards_are_refreshed_a_few_at_a_time() -> None:
    fake = FakeSections()
    fake.gate.set()
    clock = [0.0]
    cards = reader(fake, ttl_s=5, stale_s=30, max_refreshing=1, clock=lambda: clock[0])
    for member in ("a", "b"):
        await cards.read("m", member)
    fake.gate.clear()  # refreshes hang until let go
    clock[0] = 6.0

    await cards.read("m", "a")  # stale: starts the one refresh allowed
    await cards.read("m", "b")  # stale too, but answered without a refresh of its own
    await asyncio.sleep(0.01)

    assert fake.calls == 3
    fake.gate.set()
    await asyncio.sleep(0.01)
    await cards.read("m", "b")  # the slot is free again: b's turn
    await asyncio.sleep(0.01)
    assert fake.calls == 4


async def test_no_member_no_card_and_a_failing_section_is_an_error() -> None:
    fake = FakeSections()
    fake.gate.set()

    async def broken(mall_id: str, member_id: str, deadline_s: float) -> dict[str, Any]:
        raise Unavailable("upstream_unavailable", "down")

    cards = reader(fake)
    with pytest.raises(NotFound):
        await cards.read("m", "nobody")
    cards._sources[1] = SectionSource("points", broken)
    assert (await cards.read("m", "b")).card.sections["points"].as_json() == {
        "status": "unavailable",
        "reason": "error",
    }
    with pytest.raises(ValueError, match="unknown card sections"):
        CardReader([SectionSource("wallet", None)], lambda card: b"")


# -- remembered access tokens ------------------------------------------------------------------


def test_a_remembered_access_token_still_expires_and_a_changed_one_is_verified_afresh() -> None:
    now = [time.time()]
    tokens = SessionTokens("k" * 32, access_ttl_s=60, refresh_ttl_s=600, clock=lambda: now[0])
    pair = tokens.issue(Session("mall-1", "o-1", "m-1"))
    assert tokens.read_access(pair.access_token).member_id == "m-1"
    assert tokens.read_access(pair.access_token).member_id == "m-1"  # remembered

    head, payload, signature = pair.access_token.split(".")
    with pytest.raises(Unauthenticated):
        tokens.read_access(f"{head}.{payload}.{signature[:-2]}AA")
    now[0] += 61
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.read_access(pair.access_token)
