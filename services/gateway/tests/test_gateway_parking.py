"""Plates, the stay in the car park, e-receipts, shopping guides and their live notices through
the real gateway, with real member, points and parking services (parking's API can be
stopped and started again), the WeChat simulator, PostgreSQL and NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import nats
import pytest
from coupons.bootstrap import MIGRATIONS as COUPONS_MIGRATIONS
from coupons.bootstrap import bootstrap as coupons_bootstrap
from coupons.config import Settings as CouponsSettings
from gateway.bootstrap import bootstrap as gateway_bootstrap
from gateway.config import Settings as GatewaySettings
from gateway.entrypoints.keys import SHOPPERS
from kit.cli import Roles, running
from kit.migrations import migrate
from kit.proto import timestamp
from mall.coupons.v1 import coupons_pb2, coupons_service_pb2, coupons_service_pb2_grpc
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc
from mall.parking.v1 import parking_pb2, parking_service_pb2, parking_service_pb2_grpc
from mall_testing.demo import DemoMall, payment_notification, seed
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from member.bootstrap import bootstrap as member_bootstrap
from member.config import Settings as MemberSettings
from nats.js.client import JetStreamContext
from parking.bootstrap import MIGRATIONS as PARKING_MIGRATIONS
from parking.bootstrap import bootstrap as parking_bootstrap
from parking.config import Settings as ParkingSettings
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.bootstrap import bootstrap as points_bootstrap
from points.config import Settings as PointsSettings
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import MiniProgram
from wechatpay_simulator.config import Settings as SimulatorSettings

PROBLEM = "application/problem+json"
T = TypeVar("T")


async def _port(get: Any) -> int:
    for _ in range(500):
        if port := get():
            return int(port)
        await asyncio.sleep(0.01)
    raise RuntimeError("a server never bound its port")


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    value: T | None = None
    for _ in range(600):
        value = await probe()
        if done(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened; last value {value!r}")


@dataclass
class Stack:
    url: str
    http: aiohttp.ClientSession
    sim: Running
    mall: DemoMall
    gateway: Roles
    directory: member_service_pb2_grpc.DirectoryServiceAsyncStub
    members: member_service_pb2_grpc.MemberServiceAsyncStub
    gates: parking_service_pb2_grpc.CarParkServiceAsyncStub
    coupons: coupons_service_pb2_grpc.CouponsServiceAsyncStub
    parking_settings: ParkingSettings
    js: JetStreamContext
    parking_api: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    parking_admin: Any = None  # ParkingAdminService, for the mall's policy and fees

    async def start_parking_api(self) -> None:
        """parking's gRPC API on its port (the same one each time: the gateway dials it)."""
        roles = await self.parking_api.enter_async_context(parking_bootstrap(self.parking_settings))
        await self.parking_api.enter_async_context(running(roles, ("serve",)))
        await _port(lambda: roles.grpc.port if roles.grpc else 0)

    async def stop_parking_api(self) -> None:
        await self.parking_api.aclose()
        self.parking_api = contextlib.AsyncExitStack()

    async def call(
        self, method: str, path: str, *, token: str, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as resp:
            if resp.status == 204:
                return 204, {}
            data: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 400:
                assert resp.content_type == PROBLEM
            return resp.status, data

    async def login(self, openid: str) -> dict[str, Any]:
        body = {"appid": self.mall.appid, "openid": openid}
        async with self.http.post(f"{self.sim.url}/control/login-codes", json=body) as resp:
            code = (await resp.json())["code"]
        async with self.http.post(
            self.url + "/v1/session", json={"appid": self.mall.appid, "code": code}
        ) as resp:
            assert resp.status == 200, await resp.text()
            logged_in: dict[str, Any] = await resp.json()
        return logged_in

    async def member(self, openid: str | None = None) -> tuple[str, str]:
        """Log in and join; (access token with the member id, member id)."""
        session = await self.login(openid or f"o-{uuid.uuid4().hex}")
        phone = f"+86139{secrets.randbelow(10**8):08d}"
        status, joined = await self.call(
            "POST", "/v1/me/join", token=session["access_token"], body={"phone": phone}
        )
        assert status == 201, joined
        return joined["access_token"], joined["member"]["member_id"]

    async def pay(self, openid: str, amount_fen: int) -> str:
        body = payment_notification(self.mall, openid=openid, amount_fen=amount_fen)
        async with self.http.post(self.url + "/wechatpay/notifications", json=body) as resp:
            assert resp.status == 204, await resp.text()
        return str(body["resource"]["transaction_id"])


@pytest.fixture(scope="module")
async def stack(
    fresh_database: FreshDatabase, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    member_db, points_db = await fresh_database("member"), await fresh_database("points")
    parking_db = await fresh_database("parking")
    coupons_db = await fresh_database("coupons")
    await migrate(coupons_db, COUPONS_MIGRATIONS)
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    await migrate(parking_db, PARKING_MIGRATIONS)
    common: dict[str, Any] = {
        "nats_url": nats_url, "log_format": "console", "log_level": "warning"
    }  # fmt: skip
    mall = DemoMall.unique()
    secret = secrets.token_hex(16)
    folder: Path = tmp_path_factory.mktemp("gateway-parking")
    (folder / "miniprograms.json").write_text(json.dumps({mall.appid: secret}))
    sim_settings = SimulatorSettings.create(miniprograms=(MiniProgram(mall.appid, secret),))
    async with contextlib.AsyncExitStack() as stack:
        sim = await stack.enter_async_context(serve(sim_settings))
        member = await stack.enter_async_context(
            member_bootstrap(MemberSettings(database_url=member_db, grpc_port=0, **common))
        )
        await stack.enter_async_context(running(member))
        member_port = await _port(lambda: member.grpc.port if member.grpc else 0)
        points = await stack.enter_async_context(
            points_bootstrap(PointsSettings(database_url=points_db, grpc_port=0, **common))
        )
        await stack.enter_async_context(running(points))
        points_port = await _port(lambda: points.grpc.port if points.grpc else 0)
        coupons = await stack.enter_async_context(
            coupons_bootstrap(CouponsSettings(database_url=coupons_db, grpc_port=0, **common))
        )
        await stack.enter_async_context(running(coupons))
        coupons_port = await _port(lambda: coupons.grpc.port if coupons.grpc else 0)
        # parking's consumers and relay run throughout; its API server is started separately.
        parking_common = {
            **common,
            "database_url": parking_db,
            "points_grpc_target": f"127.0.0.1:{points_port}",
        }
        parking = await stack.enter_async_context(
            parking_bootstrap(ParkingSettings(grpc_port=0, **parking_common))
        )
        await stack.enter_async_context(running(parking, ("relay", "consume")))
        probe = await stack.enter_async_context(
            parking_bootstrap(ParkingSettings(grpc_port=0, **parking_common))
        )  # only to find a free port for the API server the tests stop and start
        async with running(probe, ("serve",)):
            parking_port = await _port(lambda: probe.grpc.port if probe.grpc else 0)
        await seed(f"127.0.0.1:{member_port}", mall)
        gateway = await stack.enter_async_context(
            gateway_bootstrap(
                GatewaySettings(
                    nats_url=nats_url,
                    http_port=0,
                    member_grpc_target=f"127.0.0.1:{member_port}",
                    points_grpc_target=f"127.0.0.1:{points_port}",
                    parking_grpc_target=f"127.0.0.1:{parking_port}",
                    coupons_grpc_target=f"127.0.0.1:{coupons_port}",
                    wechat_api_base=sim.url,
                    wechatpay_accept_unsigned=True,
                    miniprogram_secrets_file=folder / "miniprograms.json",
                    session_signing_key=secrets.token_urlsafe(48),  # type: ignore[arg-type]
                    sse_heartbeat_s=0.1,
                    card_ttl_s=0.05,
                    card_degraded_ttl_s=0.05,
                    card_stale_s=0,
                    card_section_deadline_s=2.0,
                    rate_limit_per_ip="",
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
        channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{member_port}")
        )
        parking_channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{parking_port}")
        )
        coupons_channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{coupons_port}")
        )
        parking_stack = Stack(
            f"http://127.0.0.1:{http_port}",
            http,
            sim,
            mall,
            gateway,
            member_service_pb2_grpc.DirectoryServiceStub(channel),
            member_service_pb2_grpc.MemberServiceStub(channel),
            parking_service_pb2_grpc.CarParkServiceStub(parking_channel),
            coupons_service_pb2_grpc.CouponsServiceStub(coupons_channel),
            ParkingSettings(grpc_port=parking_port, **parking_common),
            nc.jetstream(),
        )
        parking_stack.parking_admin = parking_service_pb2_grpc.ParkingAdminServiceStub(
            parking_channel
        )
        await parking_stack.start_parking_api()
        stack.push_async_callback(lambda: parking_stack.parking_api.aclose())
        for _ in range(500):
            if gateway.http.app[SHOPPERS].malls.mall_for_appid(mall.appid):
                break
            await asyncio.sleep(0.01)
        yield parking_stack


def plate() -> str:
    """A blue plate no other test uses."""
    return "粤B" + "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(5))


async def next_event(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    kind, data = "", ""
    while True:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and kind:
            return kind, json.loads(data)


async def stream(stack: Stack, token: str) -> aiohttp.ClientResponse:
    resp = await stack.http.get(
        stack.url + "/v1/me/events", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 200
    assert (await next_event(resp))[0] == "ready"
    return resp


# -- plates and the stay ----------------------------------------------------------------------


async def test_a_members_plates_are_theirs_alone(stack: Stack) -> None:
    token_a, _ = await stack.member()
    token_b, _ = await stack.member()
    number = plate()

    bound = await stack.call(
        "POST",
        "/v1/me/plates",
        token=token_a,
        body={"plate_number": number, "plate_color": "blue", "pay_with_points": True},
    )
    mine = await stack.call("GET", "/v1/me/plates", token=token_a)
    theirs = await stack.call("GET", "/v1/me/plates", token=token_b)
    taken = await stack.call(
        "POST", "/v1/me/plates", token=token_b, body={"plate_number": number, "plate_color": "blue"}
    )
    not_theirs = await stack.call("DELETE", f"/v1/me/plates/{number}", token=token_b)
    still = await stack.call("GET", "/v1/me/plates", token=token_a)

    assert bound[0] == 200
    assert (bound[1]["plate_number"], bound[1]["pay_with_points"]) == (number, True)
    assert [p["plate_number"] for p in mine[1]["plates"]] == [number]
    assert theirs == (200, {"plates": []})
    assert (taken[0], taken[1]["code"]) == (409, "plate_bound_elsewhere")
    assert (not_theirs[0], not_theirs[1]["code"]) == (404, "plate_not_bound")
    assert [p["plate_number"] for p in still[1]["plates"]] == [number]

    gone = await stack.call("DELETE", f"/v1/me/plates/{number}", token=token_a)
    after = await stack.call("GET", "/v1/me/plates", token=token_a)
    assert gone[0] == 204
    assert after == (200, {"plates": []})


async def test_a_plate_parking_refuses_is_a_problem_with_its_code(stack: Stack) -> None:
    token, _ = await stack.member()

    green_short = await stack.call(
        "POST", "/v1/me/plates", token=token, body={"plate_number": plate(), "plate_color": "green"}
    )
    no_colour = await stack.call(
        "POST", "/v1/me/plates", token=token, body={"plate_number": plate()}
    )
    too_many = [
        await stack.call(
            "POST", "/v1/me/plates", token=token, body={"plate_number": plate(), "plate_color": c}
        )
        for c in ("blue", "yellow", "black", "white")
    ]

    assert (green_short[0], green_short[1]["code"]) == (400, "invalid_plate_number")
    assert (no_colour[0], no_colour[1]["code"]) == (400, "invalid_plate_color")
    assert [s for s, _ in too_many] == [200, 200, 200, 409]
    assert too_many[-1][1]["code"] == "too_many_plates"


async def _car_park(stack: Stack) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A car park of the stack's mall and its gate credential, once parking accepts it."""
    car_park_id = f"park-{uuid.uuid4().hex[:8]}"
    mall_id = stack.mall.mall_id
    await stack.directory.CreateCarPark(
        member_service_pb2.CreateCarParkRequest(mall_id=mall_id, car_park_id=car_park_id, name="P")
    )
    issued = await stack.directory.IssueCredential(
        member_service_pb2.IssueCredentialRequest(mall_id=mall_id, car_park_id=car_park_id)
    )
    metadata = (("x-mall-credential", f"{issued.credential.credential_id}.{issued.secret}"),)

    async def accepted() -> bool:
        try:
            await stack.gates.SettleExit(
                parking_service_pb2.SettleExitRequest(
                    mall_id=mall_id,
                    car_park_id=car_park_id,
                    session_id=str(uuid.uuid4()),
                    quote_id=str(uuid.uuid4()),
                    payment_method=parking_pb2.PAYMENT_METHOD_CASH,
                ),
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            # refused until parking's copy of the directory has the credential
            return exc.code() not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.PERMISSION_DENIED,
            )
        return True

    await eventually(accepted, bool)
    return car_park_id, metadata


async def test_my_car_in_the_park_is_shown_and_pushed_to_me_only(stack: Stack) -> None:
    token, _ = await stack.member()
    other_token, _ = await stack.member()
    number = plate()
    await stack.call(
        "POST", "/v1/me/plates", token=token, body={"plate_number": number, "plate_color": "blue"}
    )
    car_park_id, gate = await _car_park(stack)
    before = await stack.call("GET", "/v1/me/parking", token=token)
    mine, others = await stream(stack, token), await stream(stack, other_token)
    try:
        await stack.gates.RecordEntry(
            parking_service_pb2.RecordEntryRequest(
                mall_id=stack.mall.mall_id,
                car_park_id=car_park_id,
                plate_number=number,
                plate_color=parking_pb2.PLATE_COLOR_BLUE,
                entered_at=timestamp(datetime.now(UTC) - timedelta(hours=2)),
                entry_ref=str(uuid.uuid4()),
            ),
            metadata=gate,
        )
        async with asyncio.timeout(10):
            kind, pushed = await next_event(mine)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await next_event(others)
    finally:
        mine.close()
        others.close()
    now = await stack.call("GET", "/v1/me/parking", token=token)
    card = await stack.call("GET", "/v1/me/card", token=token)

    assert before[1]["parked"] is False
    assert before[1]["payable_fen"] is None
    assert kind == "parking"
    assert (pushed["type"], pushed["plate_number"]) == ("parking.started", number)
    assert now[0] == 200
    stay = now[1]
    assert (stay["parked"], stay["car_park_id"], stay["plate_number"]) == (
        True,
        car_park_id,
        number,
    )
    assert stay["parked_minutes"] >= 120
    assert stay["payable_fen"] == stay["fee_so_far_fen"] - stay["discount_fen"]
    parking = card[1]["parking"]
    assert (parking["status"], parking["parked"], parking["car_park_id"]) == (
        "ok",
        True,
        car_park_id,
    )
    assert parking["free_minutes_today"] == sum(b["free_minutes"] for b in stay["benefits"])
    assert parking["valid_until"] > stay["entered_at"]


async def test_the_card_answers_with_parking_stopped(stack: Stack) -> None:
    token, _ = await stack.member()
    await stack.stop_parking_api()
    try:
        status, card = await stack.call("GET", "/v1/me/card", token=token)
        plates = await stack.call("GET", "/v1/me/plates", token=token)
    finally:
        await stack.start_parking_api()
    back = await eventually(
        lambda: stack.call("GET", "/v1/me/card", token=token),
        lambda answer: answer[1]["parking"]["status"] == "ok",
    )

    assert status == 200
    assert card["parking"]["status"] == "unavailable"
    assert card["member"]["status"] == "ok"
    assert card["points"]["status"] == "ok"
    assert (plates[0], plates[1]["code"]) == (503, "upstream_unavailable")
    assert back[1]["parking"]["parked"] is False


# -- e-receipts and guides --------------------------------------------------------------------


async def _register_guide(stack: Stack, guide_id: str) -> None:
    store = stack.mall.stores[0]
    issued = await stack.directory.IssueCredential(
        member_service_pb2.IssueCredentialRequest(
            mall_id=stack.mall.mall_id, tenant_id=store.tenant_id
        )
    )
    await stack.members.RegisterGuide(
        member_service_pb2.RegisterGuideRequest(
            mall_id=stack.mall.mall_id, store_id=store.store_id, guide_id=guide_id, name="Ann"
        ),
        metadata=(("x-mall-credential", f"{issued.credential.credential_id}.{issued.secret}"),),
    )


async def test_a_payments_receipt_shows_its_points_and_nobody_else_sees_it(stack: Stack) -> None:
    openid = f"o-{uuid.uuid4().hex}"
    token, _ = await stack.member(openid)
    other, _ = await stack.member()
    guide_id = f"g-{uuid.uuid4().hex[:8]}"
    await _register_guide(stack, guide_id)
    transaction_id = await stack.pay(openid, 12_300)

    page = await eventually(
        lambda: stack.call("GET", "/v1/me/receipts", token=token),
        lambda answer: bool(answer[1]["receipts"]),
    )
    receipt = await eventually(
        lambda: stack.call("GET", f"/v1/me/receipts/{transaction_id}", token=token),
        lambda answer: bool(answer[1].get("points") and answer[1]["points"]["credited"]),
    )
    stranger = await stack.call("GET", f"/v1/me/receipts/{transaction_id}", token=other)
    strangers_list = await stack.call("GET", "/v1/me/receipts", token=other)
    made_up = await stack.call("GET", "/v1/me/receipts/4200000000000", token=token)

    assert [r["transaction_id"] for r in page[1]["receipts"]] == [transaction_id]
    assert page[1]["next_cursor"] is None
    detail = receipt[1]
    assert (detail["amount_fen"], detail["store_id"]) == (12_300, stack.mall.stores[0].store_id)
    assert detail["store_name"] == stack.mall.stores[0].tenant_name
    assert page[1]["receipts"][0]["store_name"] == detail["store_name"]
    assert detail["points"]["earned"] > 0
    assert detail["points"]["reversed"] == 0
    assert detail["coupons_issued"] == []  # the mall's post-payment rule starts at 888 yuan
    assert (guide_id, False) in [(g["guide_id"], g["bound"]) for g in detail["guides"]]
    assert (stranger[0], stranger[1]["code"]) == (404, "receipt_not_found")
    assert transaction_id not in json.dumps(stranger[1])
    assert strangers_list == (200, {"receipts": [], "next_cursor": None})
    assert (made_up[0], made_up[1]["code"]) == (404, "receipt_not_found")


async def test_a_member_binds_a_guide_where_they_paid_and_hears_of_it(stack: Stack) -> None:
    openid = f"o-{uuid.uuid4().hex}"
    token, member_id = await stack.member(openid)
    other, _ = await stack.member()
    guide_id = f"g-{uuid.uuid4().hex[:8]}"
    await _register_guide(stack, guide_id)
    transaction_id = await stack.pay(openid, 5_000)
    await eventually(
        lambda: stack.call("GET", f"/v1/me/receipts/{transaction_id}", token=token),
        lambda answer: answer[0] == 200,
    )
    refused = await stack.call("POST", "/v1/me/guides", token=other, body={"guide_id": guide_id})
    unknown = await stack.call("POST", "/v1/me/guides", token=token, body={"guide_id": "nobody"})
    mine = await stream(stack, token)
    try:
        bound = await stack.call("POST", "/v1/me/guides", token=token, body={"guide_id": guide_id})
        async with asyncio.timeout(10):
            kind, pushed = await next_event(mine)
            while kind == "points":  # the payment's points may be pushed first
                kind, pushed = await next_event(mine)
    finally:
        mine.close()
    listed = await stack.call("GET", "/v1/me/guides", token=token)
    nobody = await stack.call("GET", "/v1/me/guides", token=other)
    receipt = await stack.call("GET", f"/v1/me/receipts/{transaction_id}", token=token)

    assert (refused[0], refused[1]["code"]) == (409, "no_payment_at_store")
    assert (unknown[0], unknown[1]["code"]) == (404, "guide_not_found")
    assert bound[0] == 200
    assert (bound[1]["guide_id"], bound[1]["previous_guide_id"]) == (guide_id, None)
    assert (kind, pushed["type"], pushed["guide_id"]) == ("guide", "guide.bound", guide_id)
    assert [g["guide_id"] for g in listed[1]["guides"]] == [guide_id]
    assert nobody == (200, {"guides": []})
    assert (guide_id, True) in [(g["guide_id"], g["bound"]) for g in receipt[1]["guides"]]
    assert member_id not in json.dumps(nobody[1])


# -- merged members ---------------------------------------------------------------------------


async def test_a_merged_members_session_switches_to_the_survivor(stack: Stack) -> None:
    openid = f"o-{uuid.uuid4().hex}"
    session = await stack.login(openid)
    phone = f"+86139{secrets.randbelow(10**8):08d}"
    status, joined = await stack.call(
        "POST", "/v1/me/join", token=session["access_token"], body={"phone": phone}
    )
    assert status == 201
    merged_token, merged_id = joined["access_token"], joined["member"]["member_id"]
    _, survivor_id = await stack.member()
    await stack.members.MergeMembers(
        member_service_pb2.MergeMembersRequest(
            mall_id=stack.mall.mall_id,
            survivor_member_id=survivor_id,
            merged_member_id=merged_id,
            merge_request_id=str(uuid.uuid4()),
            operator="test",
            reason="same person",
        )
    )

    me = await stack.call("GET", "/v1/me", token=merged_token)
    # The gateway hears member.identity.merged: the old token reads as the survivor everywhere.
    old_card = await eventually(
        lambda: stack.call("GET", "/v1/me/card", token=merged_token),
        lambda answer: answer[1].get("member_id") == survivor_id,
    )
    async with stack.http.post(
        stack.url + "/v1/session/refresh", json={"refresh_token": joined["refresh_token"]}
    ) as resp:
        refreshed = await resp.json()
    card = await stack.call("GET", "/v1/me/card", token=refreshed["access_token"])
    again = await stack.login(openid)

    assert me[0] == 200
    assert me[1]["member_id"] == survivor_id
    assert old_card[0] == 200
    assert refreshed["member"]["member_id"] == survivor_id
    assert card[1]["member_id"] == survivor_id  # the refreshed token names the survivor
    assert again["member"]["member_id"] == survivor_id


async def test_a_receipt_lists_the_coupons_its_payment_issued(stack: Stack) -> None:
    now = datetime.now(UTC)
    stock = await stack.coupons.CreateStock(
        coupons_service_pb2.CreateStockRequest(
            stock=coupons_pb2.Stock(
                mall_id=stack.mall.mall_id,
                title="满888送50",
                coupon_type=coupons_pb2.COUPON_TYPE_FIXED_AMOUNT,
                discount_fen=5000,
                threshold_fen=10000,
                max_coupons=100,
                max_per_member=5,
                claim_starts_at=timestamp(now - timedelta(hours=1)),
                claim_ends_at=timestamp(now + timedelta(days=1)),
                valid_days=30,
            ),
            request_id=uuid.uuid4().hex,
        )
    )
    await stack.coupons.PutPostPaymentRule(
        coupons_service_pb2.PutPostPaymentRuleRequest(
            rule=coupons_pb2.PostPaymentRule(
                mall_id=stack.mall.mall_id,
                rule_id=f"r-{uuid.uuid4().hex[:8]}",
                stock_id=stock.stock.stock_id,
                min_amount_fen=88_800,
                starts_at=timestamp(now - timedelta(hours=1)),
                enabled=True,
            )
        )
    )
    openid = f"o-{uuid.uuid4().hex}"
    token, _ = await stack.member(openid)
    big = await stack.pay(openid, 99_900)
    small = await stack.pay(openid, 1_000)

    receipt = await eventually(
        lambda: stack.call("GET", f"/v1/me/receipts/{big}", token=token),
        lambda answer: bool(answer[0] == 200 and answer[1]["coupons_issued"]),
    )
    other = await eventually(
        lambda: stack.call("GET", f"/v1/me/receipts/{small}", token=token),
        lambda answer: answer[0] == 200,
    )

    [issued] = receipt[1]["coupons_issued"]
    assert (issued["stock_id"], issued["title"]) == (stock.stock.stock_id, "满888送50")
    assert issued["channel"] == "post_payment"
    assert other[1]["coupons_issued"] == []


async def test_a_tier_change_pushes_its_benefits_to_that_member_only(stack: Stack) -> None:
    openid = f"o-{uuid.uuid4().hex}"
    token, _ = await stack.member(openid)
    other, _ = await stack.member()
    mine, theirs = await stream(stack, token), await stream(stack, other)
    try:
        await stack.pay(openid, 500_000)  # 5,000 yuan: silver
        async with asyncio.timeout(15):
            kind, pushed = await next_event(mine)
            while kind != "benefits":
                kind, pushed = await next_event(mine)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await next_event(theirs)
    finally:
        mine.close()
        theirs.close()
    card = await stack.call("GET", "/v1/me/card", token=token)

    assert (pushed["type"], pushed["tier_code"], pushed["previous_tier_code"]) == (
        "benefits.changed",
        "silver",
        "basic",
    )
    assert card[1]["member"]["tier_code"] == "silver"


# -- today's benefits and settling before leaving ---------------------------------------------


async def test_benefits_show_unparked_and_a_prepaid_car_leaves_without_paying(
    stack: Stack,
) -> None:
    mall_id = stack.mall.mall_id
    await stack.parking_admin.PutParkingPolicy(
        parking_service_pb2.PutParkingPolicyRequest(
            policy=parking_pb2.ParkingPolicy(
                mall_id=mall_id,
                spend_step_fen=100_000,
                spend_step_minutes=60,
                spend_max_minutes=120,
                points_per_hour=1,
                points_max_hours=3,
            )
        )
    )
    car_park_id, gate = await _car_park(stack)
    await stack.parking_admin.PutFeeSchedule(
        parking_service_pb2.PutFeeScheduleRequest(
            schedule=parking_pb2.FeeSchedule(
                mall_id=mall_id,
                car_park_id=car_park_id,
                free_minutes=15,
                unit_minutes=60,
                unit_fee_fen=500,
                effective_from=timestamp(datetime(2020, 1, 1, tzinfo=UTC)),
            )
        )
    )
    openid = f"o-{uuid.uuid4().hex}"
    token, _ = await stack.member(openid)
    other, _ = await stack.member()
    number = plate()
    await stack.call(
        "POST", "/v1/me/plates", token=token, body={"plate_number": number, "plate_color": "blue"}
    )
    transaction_id = await stack.pay(openid, 100_000)  # 1,000 yuan: one step, one hour

    card = await eventually(
        lambda: stack.call("GET", "/v1/me/card", token=token),
        lambda answer: answer[1]["parking"].get("free_minutes_today") == 60,
    )
    receipt = await eventually(
        lambda: stack.call("GET", f"/v1/me/receipts/{transaction_id}", token=token),
        lambda answer: answer[0] == 200 and answer[1]["parking_benefit"] is not None,
    )
    no_car = await stack.call(
        "POST", "/v1/me/parking/quote", token=token, body={"request_id": uuid.uuid4().hex}
    )

    assert (card[1]["parking"]["parked"], card[1]["parking"]["payable_fen"]) == (False, None)
    benefit = receipt[1]["parking_benefit"]
    assert (benefit["free_minutes"], benefit["spend_before_fen"]) == (60, 0)
    assert benefit["spend_after_fen"] == 100_000
    assert (no_car[0], no_car[1]["code"]) == (404, "session_not_found")

    # In for two and a half hours: the spend hour covers one, points buy the other two.
    await stack.gates.RecordEntry(
        parking_service_pb2.RecordEntryRequest(
            mall_id=mall_id,
            car_park_id=car_park_id,
            plate_number=number,
            plate_color=parking_pb2.PLATE_COLOR_BLUE,
            entered_at=timestamp(datetime.now(UTC) - timedelta(hours=2, minutes=30)),
            entry_ref=str(uuid.uuid4()),
        ),
        metadata=gate,
    )
    quoted = await eventually(  # once points credited the payment
        lambda: stack.call(
            "POST",
            "/v1/me/parking/quote",
            token=token,
            body={"use_points": True, "request_id": uuid.uuid4().hex},
        ),
        lambda answer: answer[0] == 200 and answer[1]["payable_fen"] == 0,
    )
    q = quoted[1]
    body = {"session_id": q["session_id"], "quote_id": q["quote_id"], "request_id": "settle-1"}
    theirs = await stack.call("POST", "/v1/me/parking/settle", token=other, body=body)
    settled = await stack.call("POST", "/v1/me/parking/settle", token=token, body=body)
    again = await stack.call("POST", "/v1/me/parking/settle", token=token, body=body)
    at_gate = await stack.gates.QuoteExit(
        parking_service_pb2.QuoteExitRequest(
            mall_id=mall_id, car_park_id=car_park_id, plate_number=number
        ),
        metadata=gate,
    )

    assert [(b["kind"], b["free_minutes"]) for b in q["benefits"]] == [
        ("spend", 60),
        ("points", 120),
    ]
    assert (q["points"], q["fee_fen"], q["discount_fen"]) == (2, 1500, 1500)
    assert (theirs[0], theirs[1]["code"]) == (404, "session_not_found")
    assert settled[0] == 200, settled
    assert (settled[1]["quote_id"], settled[1]["payable_fen"]) == (q["quote_id"], 0)
    assert settled[1]["leave_by"] > settled[1]["settled_at"]
    assert again == settled
    assert (at_gate.prepaid, at_gate.gate_may_open, at_gate.quote.payable_fen) == (True, True, 0)
    stay = await stack.call("GET", "/v1/me/parking", token=token)
    assert (stay[1]["leave_by"], stay[1]["payable_fen"]) == (settled[1]["leave_by"], 0)
