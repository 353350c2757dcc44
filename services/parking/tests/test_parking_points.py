"""Hours bought with points, against a real points server: held at the quote, confirmed when
the car leaves on it, released when it does not leave; and quoted without points when points
is unreachable, so a covered car is never kept at the gate."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg
import grpc
import nats
import pytest
from kit.cli import serving
from kit.credentials import hash_secret
from kit.grpc_errors import from_rpc_error
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.migrations import migrate
from kit.proto import timestamp, to_datetime
from mall.member.v1 import directory_pb2
from mall.parking.v1 import parking_pb2 as pb
from mall.parking.v1 import parking_service_pb2 as api
from mall.parking.v1 import parking_service_pb2_grpc as stubs
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc
from mall_testing.plugin import FreshDatabase
from parking.adapters.points import GrpcPoints
from parking.bootstrap import MIGRATIONS, bootstrap
from parking.config import Settings
from parking.service_layer.holds import settle_holds
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.bootstrap import bootstrap as points_bootstrap
from points.config import Settings as PointsSettings
from points.domain.model import AttributedPayment
from points.service_layer.credits import credit_payments

T = TypeVar("T")


@dataclass
class World:
    parking_url: str
    points_url: str
    points_target: str
    gates: stubs.CarParkServiceAsyncStub
    parking: stubs.ParkingServiceAsyncStub
    admin: stubs.ParkingAdminServiceAsyncStub
    points: points_service_pb2_grpc.PointsServiceAsyncStub
    js: nats.js.JetStreamContext


@pytest.fixture(scope="module")
async def world(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[World]:
    points_url = await fresh_database("points")
    parking_url = await fresh_database("parking")
    await migrate(points_url, POINTS_MIGRATIONS)
    await migrate(parking_url, MIGRATIONS)
    points_settings = PointsSettings(
        database_url=points_url, nats_url=nats_url, grpc_port=0, log_level="warning"
    )
    nc = await nats.connect(nats_url)
    try:
        async with (
            points_bootstrap(points_settings) as points_roles,
            serving(points_roles) as points_target,
        ):
            settings = Settings(
                database_url=parking_url,
                nats_url=nats_url,
                grpc_port=0,
                log_level="warning",
                points_grpc_target=points_target,
            )
            async with (
                bootstrap(settings) as roles,
                serving(roles, ("serve", "consume")) as target,
                grpc.aio.insecure_channel(target) as channel,
                grpc.aio.insecure_channel(points_target) as points_channel,
            ):
                yield World(
                    parking_url,
                    points_url,
                    points_target,
                    stubs.CarParkServiceStub(channel),
                    stubs.ParkingServiceStub(channel),
                    stubs.ParkingAdminServiceStub(channel),
                    points_service_pb2_grpc.PointsServiceStub(points_channel),
                    nc.jetstream(),
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
    member_id: str
    plate: str


async def admitted(gates: stubs.CarParkServiceAsyncStub, s: Scene) -> bool:
    """Whether ``gates`` lets the scene's car park in (its directory copy has the credential):
    a settlement of an unknown session gets past the check to NOT_FOUND."""
    try:
        await gates.SettleExit(
            api.SettleExitRequest(
                mall_id=s.mall_id,
                car_park_id=s.car_park_id,
                session_id=str(uuid.uuid4()),
                quote_id=str(uuid.uuid4()),
                payment_method=pb.PAYMENT_METHOD_CASH,
            ),
            metadata=s.metadata,
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code() == grpc.StatusCode.NOT_FOUND
    return True


async def scene(world: World, unique_id: str, *, points: int) -> Scene:
    """A car park (5 yuan per started hour), a mall selling parking hours at 100 points, and a
    member with ``points`` whose plate pays with points."""
    mall_id, car_park_id = f"mall-{unique_id}", f"park-{unique_id}"
    secret, credential_id = uuid.uuid4().hex, f"cred-{unique_id}"
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
    await world.admin.PutParkingPolicy(
        api.PutParkingPolicyRequest(
            policy=pb.ParkingPolicy(mall_id=mall_id, points_per_hour=100, points_max_hours=3)
        )
    )
    member_id = str(uuid.uuid4())
    plate = f"粤B{int(unique_id, 16) % 100_000:05d}"
    await world.parking.BindPlate(
        api.BindPlateRequest(
            mall_id=mall_id,
            member_id=member_id,
            plate_number=plate,
            plate_color=pb.PLATE_COLOR_BLUE,
            pay_with_points=True,
        )
    )
    conn = await asyncpg.connect(world.points_url)
    try:
        async with conn.transaction():
            payment = AttributedPayment(
                event_id=str(uuid.uuid4()),
                mall_id=mall_id,
                member_id=member_id,
                transaction_id=f"4200{uuid.uuid4().hex[:20]}",
                tenant_id="coffee-corner",
                amount_fen=points * 100,
                paid_at=datetime.now(UTC),
            )
            await credit_payments(conn, [(payment, {})])
    finally:
        await conn.close()
    metadata = (("x-mall-credential", f"{credential_id}.{secret}"),)

    async def authenticated() -> bool:
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
        except grpc.aio.AioRpcError as exc:  # loading, or not there yet: not yet
            return exc.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
        return True

    await eventually(authenticated, bool)
    return Scene(mall_id, car_park_id, metadata, member_id, plate)


async def account(world: World, s: Scene) -> tuple[int, int, int]:
    """(balance, held, available) at points."""
    reply = await world.points.GetAccount(
        points_service_pb2.GetAccountRequest(mall_id=s.mall_id, member_id=s.member_id)
    )
    return reply.account.balance, reply.account.held, reply.account.available


async def enter_and_quote(
    world: World, s: Scene, entered: datetime, exit_at: datetime
) -> api.QuoteExitResponse:
    await world.gates.RecordEntry(
        api.RecordEntryRequest(
            mall_id=s.mall_id,
            car_park_id=s.car_park_id,
            plate_number=s.plate,
            plate_color=pb.PLATE_COLOR_BLUE,
            entered_at=timestamp(entered),
            entry_ref=uuid.uuid4().hex,
        ),
        metadata=s.metadata,
    )
    return await quote(world, s, exit_at)


async def quote(world: World, s: Scene, exit_at: datetime) -> api.QuoteExitResponse:
    return await world.gates.QuoteExit(
        api.QuoteExitRequest(
            mall_id=s.mall_id,
            car_park_id=s.car_park_id,
            plate_number=s.plate,
            exit_at=timestamp(exit_at),
        ),
        metadata=s.metadata,
    )


def points_line(reply: api.QuoteExitResponse) -> tuple[int, int, int]:
    (line,) = [b for b in reply.quote.benefits if b.kind == pb.BENEFIT_KIND_POINTS]
    return line.free_minutes, line.points, line.discount_fen


async def test_points_held_at_the_quote_are_released_when_the_car_does_not_leave(
    world: World, unique_id: str
) -> None:
    s = await scene(world, unique_id, points=500)
    now = datetime.now(UTC)

    reply = await enter_and_quote(world, s, now - timedelta(hours=2, minutes=30), now)

    assert points_line(reply) == (180, 300, 1500)
    assert (reply.quote.payable_fen, reply.gate_may_open) == (0, True)
    assert await account(world, s) == (500, 300, 200)

    # The car stays; once the quote's deadline has passed the hold goes back.
    pool = await asyncpg.create_pool(world.parking_url, min_size=1, max_size=2)
    try:
        async with grpc.aio.insecure_channel(world.points_target) as channel:
            run = await settle_holds(
                pool,
                GrpcPoints(channel),
                to_datetime(reply.quote.valid_until) + timedelta(seconds=1),
                mall_id=s.mall_id,
                session_id=reply.session.session_id,
            )
    finally:
        await pool.close()

    assert (run.expired, run.released) == (1, 1)
    assert await account(world, s) == (500, 0, 500)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gates.SettleExit(
            api.SettleExitRequest(
                mall_id=s.mall_id,
                car_park_id=s.car_park_id,
                session_id=reply.session.session_id,
                quote_id=reply.quote.quote_id,
                exited_at=reply.quote.quoted_at,
                payment_method=pb.PAYMENT_METHOD_POINTS,
            ),
            metadata=s.metadata,
        )
    error = from_rpc_error(caught.value)
    assert error is not None
    assert error.code == "quote_expired"


async def test_points_are_spent_when_the_car_leaves_and_a_new_quote_releases_the_old_hold(
    world: World, unique_id: str
) -> None:
    s = await scene(world, unique_id, points=500)
    now = datetime.now(UTC)
    first = await enter_and_quote(world, s, now - timedelta(minutes=50), now)
    assert points_line(first) == (60, 100, 500)

    later = await quote(world, s, now + timedelta(minutes=20))  # the car waited: two hours now
    assert points_line(later) == (120, 200, 1000)
    # The first hold is released, right after the second quote.
    await eventually(lambda: account(world, s), lambda a: a == (500, 200, 300))

    settled = await world.gates.SettleExit(
        api.SettleExitRequest(
            mall_id=s.mall_id,
            car_park_id=s.car_park_id,
            session_id=later.session.session_id,
            quote_id=later.quote.quote_id,
            exited_at=later.quote.quoted_at,
            payment_method=pb.PAYMENT_METHOD_POINTS,
        ),
        metadata=s.metadata,
    )

    assert settled.gate_may_open
    assert (settled.session.discount_fen, settled.session.paid_fen) == (1000, 0)
    assert await eventually(lambda: account(world, s), lambda a: a == (300, 0, 300))


async def test_too_few_points_quote_what_benefits_cover(world: World, unique_id: str) -> None:
    s = await scene(world, unique_id, points=50)
    now = datetime.now(UTC)

    reply = await enter_and_quote(world, s, now - timedelta(minutes=50), now)

    assert list(reply.quote.benefits) == []
    assert (reply.quote.payable_fen, reply.gate_may_open) == (500, False)
    assert await account(world, s) == (50, 0, 50)


async def test_with_points_unreachable_the_quote_goes_without_points(
    world: World, unique_id: str, nats_url: str
) -> None:
    s = await scene(world, unique_id, points=500)
    now = datetime.now(UTC)
    settings = Settings(
        database_url=world.parking_url,
        nats_url=nats_url,
        grpc_port=0,
        log_level="error",
        points_grpc_target="127.0.0.1:1",  # nothing listens there
        points_timeout_s=0.3,
    )
    async with (
        bootstrap(settings) as roles,
        serving(roles) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        cut_off = World(**{**vars(world), "gates": stubs.CarParkServiceStub(channel)})
        await eventually(lambda: admitted(cut_off.gates, s), bool)
        reply = await enter_and_quote(cut_off, s, now - timedelta(minutes=50), now)

    assert list(reply.quote.benefits) == []
    assert (reply.quote.gross_fee_fen, reply.quote.payable_fen) == (500, 500)
    assert await account(world, s) == (500, 0, 500)


async def test_a_car_seen_entering_again_gets_its_held_points_back(
    world: World, unique_id: str
) -> None:
    s = await scene(world, unique_id, points=500)
    now = datetime.now(UTC)
    held = await enter_and_quote(world, s, now - timedelta(minutes=50), now)
    assert points_line(held)[1] == 100
    assert await account(world, s) == (500, 100, 400)

    # The exit camera missed the car; it comes back in later: the old stay is closed unpaid.
    again = await world.gates.RecordEntry(
        api.RecordEntryRequest(
            mall_id=s.mall_id,
            car_park_id=s.car_park_id,
            plate_number=s.plate,
            plate_color=pb.PLATE_COLOR_BLUE,
            entered_at=timestamp(now + timedelta(hours=1)),
            entry_ref=uuid.uuid4().hex,
        ),
        metadata=s.metadata,
    )

    assert again.session.session_id != held.session.session_id
    assert await eventually(lambda: account(world, s), lambda a: a == (500, 0, 500))


async def test_quoting_a_stay_again_does_not_need_its_points_twice(
    world: World, unique_id: str
) -> None:
    s = await scene(world, unique_id, points=150)
    now = datetime.now(UTC)
    first = await enter_and_quote(world, s, now - timedelta(minutes=50), now)

    again = await quote(world, s, now + timedelta(minutes=5))  # still one started hour

    assert points_line(first)[1] == 100
    assert points_line(again)[1] == 100  # 150 points: the first hold went back first
    assert again.quote.payable_fen == 0
    assert await account(world, s) == (150, 100, 50)
