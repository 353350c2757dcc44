"""WeChat Pay parking against the WeChat Pay simulator: the parking state sync (IN / OUT) of an
authorised shopper, and pay-score parking — the entry reported, the fee deducted after the
exit — with retries, each call's state visible to ops."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import nats
import pytest
from kit.cli import serving
from kit.credentials import hash_secret
from kit.grpc_errors import from_rpc_error
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.migrations import migrate
from kit.proto import timestamp
from mall.member.v1 import directory_pb2
from mall.member.v1 import events_pb2 as member_events
from mall.parking.v1 import parking_pb2 as pb
from mall.parking.v1 import parking_service_pb2 as api
from mall.parking.v1 import parking_service_pb2_grpc as stubs
from mall_testing.plugin import FreshDatabase
from parking.bootstrap import MIGRATIONS, bootstrap
from parking.config import Settings
from wechatpay import signing
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import Merchant
from wechatpay_simulator.config import Settings as SimulatorSettings

MCHID = "1900000109"
PLATFORM_SERIAL = "PUB_KEY_ID_0114232134912410000000000001"
T = TypeVar("T")


@dataclass
class World:
    sim: Running
    http: aiohttp.ClientSession
    js: Any
    gates: stubs.CarParkServiceAsyncStub
    parking: stubs.ParkingServiceAsyncStub
    admin: stubs.ParkingAdminServiceAsyncStub

    async def control(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with self.http.request(method, self.sim.url + path, json=body) as resp:
            assert resp.status < 300, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    async def publish(self, subject: str, message: Any) -> None:
        await self.js.publish(
            subject, message.SerializeToString(), headers={"Nats-Msg-Id": str(uuid.uuid4())}
        )


@pytest.fixture(scope="module")
async def world(
    fresh_database: FreshDatabase, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    keys: Path = tmp_path_factory.mktemp("wechatpay-keys")
    merchant_key, platform_key = signing.generate_private_key(), signing.generate_private_key()
    (keys / "merchant.pem").write_bytes(signing.private_key_pem(merchant_key))
    (keys / "platform.pem").write_bytes(signing.public_key_pem(platform_key.public_key()))
    sim_settings = SimulatorSettings.create(
        [Merchant(MCHID, public_key=merchant_key.public_key())],
        platform_key=platform_key,
        platform_serial=PLATFORM_SERIAL,
    )
    url = await fresh_database("parking")
    await migrate(url, MIGRATIONS)
    nc = await nats.connect(nats_url)
    try:
        async with serve(sim_settings) as sim, aiohttp.ClientSession() as http:
            serial = sim.state.merchants[MCHID].serial_no
            assert serial is not None
            settings = Settings(
                database_url=url,
                nats_url=nats_url,
                grpc_port=0,
                log_level="warning",
                points_grpc_target="",
                wechatpay_api_base=sim.url,
                wechatpay_mchid=MCHID,
                wechatpay_merchant_serial=serial,
                wechatpay_merchant_private_key_file=keys / "merchant.pem",
                wechatpay_platform_public_keys={PLATFORM_SERIAL: keys / "platform.pem"},
                wechatpay_poll_interval_s=0.05,
                wechatpay_retry_max_s=0.2,
            )
            async with (
                bootstrap(settings) as roles,
                serving(roles, ("serve", "consume", "relay")) as target,
                grpc.aio.insecure_channel(target) as channel,
            ):
                yield World(
                    sim,
                    http,
                    nc.jetstream(),
                    stubs.CarParkServiceStub(channel),
                    stubs.ParkingServiceStub(channel),
                    stubs.ParkingAdminServiceStub(channel),
                )
    finally:
        await nc.close()


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    for _ in range(200):
        value = await probe()
        if done(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened; last value {value!r}")


@dataclass(frozen=True)
class Scene:
    mall_id: str
    car_park_id: str
    metadata: tuple[tuple[str, str], ...]
    appid: str
    openid: str
    plate: str


async def scene(world: World, unique_id: str) -> Scene:
    """A mall (brand id, time zone), its car park and credential, a 5-yuan-an-hour tariff, and
    a member who authorised the mall's parking services for their plate."""
    mall_id, car_park_id = f"mall-{unique_id}", f"park-{unique_id}"
    appid, openid = f"wx{unique_id}", f"o-{unique_id}"
    secret, credential_id = uuid.uuid4().hex, f"cred-{unique_id}"
    await world.publish(
        "member.directory.mall_upserted",
        member_events.MallUpserted(
            mall_id=mall_id,
            mall=directory_pb2.Mall(
                mall_id=mall_id,
                appid=appid,
                brand_id=f"brand-{unique_id}",
                mchid=MCHID,
                time_zone="Asia/Shanghai",
            ),
        ),
    )
    await world.publish(
        "member.directory.car_park_upserted",
        member_events.CarParkUpserted(
            mall_id=mall_id,
            car_park=directory_pb2.CarPark(
                mall_id=mall_id, car_park_id=car_park_id, name="B2 停车场"
            ),
        ),
    )
    credential = directory_pb2.Credential(
        mall_id=mall_id,
        credential_id=credential_id,
        car_park_id=car_park_id,
        secret_hash=hash_secret(secret),
    )
    bucket = await open_bucket(world.js, DIRECTORY_BUCKET)  # as member projects it
    await bucket.put(
        f"credential.{credential.mall_id}.{credential.credential_id}",
        credential.SerializeToString(),
    )
    await world.admin.PutFeeSchedule(
        api.PutFeeScheduleRequest(
            schedule=pb.FeeSchedule(
                mall_id=mall_id,
                car_park_id=car_park_id,
                free_minutes=15,
                unit_minutes=60,
                unit_fee_fen=500,
                effective_from=timestamp(datetime(2020, 1, 1, tzinfo=UTC)),
            )
        )
    )
    plate = f"粤B{int(unique_id, 16) % 100_000:05d}"
    await world.parking.BindPlate(
        api.BindPlateRequest(
            mall_id=mall_id,
            member_id=str(uuid.uuid4()),
            plate_number=plate,
            plate_color=pb.PLATE_COLOR_BLUE,
            appid=appid,
            openid=openid,
        )
    )
    metadata = (("x-mall-credential", f"{credential_id}.{secret}"),)

    async def ready() -> bool:  # the directory events reached parking
        detail = await world.admin.ListFeeSchedules(
            api.ListFeeSchedulesRequest(mall_id=mall_id, car_park_id=car_park_id)
        )
        try:
            await world.gates.SettleExit(
                api.SettleExitRequest(
                    mall_id=mall_id,
                    car_park_id=car_park_id,
                    session_id=str(uuid.uuid4()),
                    quote_id=str(uuid.uuid4()),
                    payment_method=pb.PAYMENT_METHOD_CASH,
                ),
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            return bool(detail.schedules) and exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    await eventually(ready, bool)
    return Scene(mall_id, car_park_id, metadata, appid, openid, plate)


async def enter(world: World, s: Scene, at: datetime) -> api.RecordEntryResponse:
    return await world.gates.RecordEntry(
        api.RecordEntryRequest(
            mall_id=s.mall_id,
            car_park_id=s.car_park_id,
            plate_number=s.plate,
            plate_color=pb.PLATE_COLOR_BLUE,
            entered_at=timestamp(at),
            entry_ref=uuid.uuid4().hex,
        ),
        metadata=s.metadata,
    )


async def syncs(world: World, s: Scene, session_id: str) -> dict[int, pb.SessionSync]:
    reply = await world.admin.GetSession(
        api.GetSessionRequest(mall_id=s.mall_id, session_id=session_id)
    )
    return {sync.kind: sync for sync in reply.syncs}


def all_settled(found: dict[int, pb.SessionSync], kinds: set[int]) -> bool:
    return kinds <= set(found) and all(found[k].state != pb.SYNC_STATE_PENDING for k in kinds)


async def test_pay_score_parking_reports_the_entry_and_deducts_after_the_exit(
    world: World, unique_id: str
) -> None:
    s = await scene(world, unique_id)
    await world.control(
        "POST",
        "/control/parking/pay-score-plates",
        {"appid": s.appid, "openid": s.openid, "plate_number": s.plate, "plate_color": "BLUE"},
    )
    now = datetime.now(UTC)
    entry = await enter(world, s, now - timedelta(hours=2, minutes=10))
    session_id = entry.session.session_id
    entered = await eventually(
        lambda: syncs(world, s, session_id),
        lambda f: all_settled(f, {pb.SYNC_KIND_STATE_IN, pb.SYNC_KIND_PAY_SCORE_ENTRY}),
    )
    assert entered[pb.SYNC_KIND_PAY_SCORE_ENTRY].state == pb.SYNC_STATE_SENT
    parking_id = entered[pb.SYNC_KIND_PAY_SCORE_ENTRY].platform_ref

    quote = await world.gates.QuoteExit(
        api.QuoteExitRequest(
            mall_id=s.mall_id, car_park_id=s.car_park_id, plate_number=s.plate,
            exit_at=timestamp(now),
        ),
        metadata=s.metadata,
    )  # fmt: skip
    assert quote.session.pay_score
    assert (quote.quote.payable_fen, quote.gate_may_open) == (1500, True)
    await world.gates.SettleExit(
        api.SettleExitRequest(
            mall_id=s.mall_id,
            car_park_id=s.car_park_id,
            session_id=session_id,
            quote_id=quote.quote.quote_id,
            exited_at=quote.quote.quoted_at,
            payment_method=pb.PAYMENT_METHOD_PAY_SCORE,
        ),
        metadata=s.metadata,
    )
    left = await eventually(
        lambda: syncs(world, s, session_id),
        lambda f: all_settled(f, {pb.SYNC_KIND_STATE_OUT, pb.SYNC_KIND_PAY_SCORE_DEDUCTION}),
    )

    assert {k: v.state for k, v in left.items()} == {
        pb.SYNC_KIND_STATE_IN: pb.SYNC_STATE_SENT,
        pb.SYNC_KIND_PAY_SCORE_ENTRY: pb.SYNC_STATE_SENT,
        pb.SYNC_KIND_STATE_OUT: pb.SYNC_STATE_SENT,
        pb.SYNC_KIND_PAY_SCORE_DEDUCTION: pb.SYNC_STATE_SENT,
    }
    platform = await world.control("GET", f"/control/parking/pay-score?plate_number={s.plate}")
    (parking,) = platform["parkings"]
    (deduction,) = platform["deductions"]
    assert parking["id"] == parking_id
    reported = {"parking_name": "B2 停车场", "free_duration": 900}  # the 15 free minutes
    assert {k: parking[k] for k in reported} == reported
    assert parking["start_time"].endswith("+08:00")
    assert deduction["amount"]["total"] == 1500
    assert deduction["parking_info"]["parking_id"] == parking_id
    charged = {"parking_id": parking_id, "charging_duration": 130 * 60}  # 2 h 10 min
    assert {k: deduction["parking_info"][k] for k in charged} == charged
    state = await world.control("GET", f"/control/parking/state-syncs?plate_number={s.plate}")
    assert [(x["state"], x["openid"], x["brandid"]) for x in state["state_syncs"]] == [
        ("IN", s.openid, f"brand-{unique_id}"),
        ("OUT", s.openid, f"brand-{unique_id}"),
    ]


async def test_a_plate_without_pay_score_is_synced_but_pays_at_the_exit_and_retries_survive(
    world: World, unique_id: str
) -> None:
    s = await scene(world, unique_id)
    await world.control(
        "POST", "/control/parking/faults", {"operation": "state_sync", "fail_next": 2}
    )
    now = datetime.now(UTC)

    entry = await enter(world, s, now - timedelta(minutes=40))
    found = await eventually(
        lambda: syncs(world, s, entry.session.session_id),
        lambda f: all_settled(f, {pb.SYNC_KIND_STATE_IN, pb.SYNC_KIND_PAY_SCORE_ENTRY}),
    )

    assert found[pb.SYNC_KIND_PAY_SCORE_ENTRY].state == pb.SYNC_STATE_SKIPPED
    state_in = found[pb.SYNC_KIND_STATE_IN]
    assert (state_in.state, state_in.attempts) == (pb.SYNC_STATE_SENT, 3)
    quote = await world.gates.QuoteExit(
        api.QuoteExitRequest(
            mall_id=s.mall_id, car_park_id=s.car_park_id, plate_number=s.plate,
            exit_at=timestamp(now),
        ),
        metadata=s.metadata,
    )  # fmt: skip
    assert (quote.session.pay_score, quote.gate_may_open) == (False, False)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gates.SettleExit(
            api.SettleExitRequest(
                mall_id=s.mall_id,
                car_park_id=s.car_park_id,
                session_id=entry.session.session_id,
                quote_id=quote.quote.quote_id,
                payment_method=pb.PAYMENT_METHOD_PAY_SCORE,
            ),
            metadata=s.metadata,
        )
    error = from_rpc_error(caught.value)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error is not None
    assert error.code == "pay_score_not_enabled"
