"""The shopper's side of parking, against real points and parking servers: today's benefits
with or without a car inside, what one payment added, and settling before leaving (points held
at the member's quote, spent at the settlement; the exit gate then opens without payment until
the grace period ends, and charges the time after it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import nats
import pytest
from carpark_simulator.gate import Gate
from google.protobuf.message import Message
from kit.cli import serving
from kit.credentials import hash_secret
from kit.grpc_errors import from_rpc_error
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.migrations import migrate
from kit.proto import timestamp, to_datetime
from mall.coupons.v1 import coupons_pb2
from mall.coupons.v1 import events_pb2 as coupon_events
from mall.member.v1 import directory_pb2
from mall.member.v1 import events_pb2 as member_events
from mall.parking.v1 import parking_pb2 as pb
from mall.parking.v1 import parking_service_pb2 as api
from mall.parking.v1 import parking_service_pb2_grpc as stubs
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc
from mall_testing.plugin import FreshDatabase
from parking.bootstrap import MIGRATIONS, bootstrap
from parking.config import Settings
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.bootstrap import bootstrap as points_bootstrap
from points.config import Settings as PointsSettings
from points.domain.model import AttributedPayment
from points.service_layer.credits import credit_payments

T = TypeVar("T")
SH = ZoneInfo("Asia/Shanghai")


@dataclass
class World:
    points_url: str
    channel: grpc.aio.Channel
    gates: stubs.CarParkServiceAsyncStub
    parking: stubs.ParkingServiceAsyncStub
    admin: stubs.ParkingAdminServiceAsyncStub
    points: points_service_pb2_grpc.PointsServiceAsyncStub
    js: nats.js.JetStreamContext

    async def publish(self, subject: str, message: Message) -> None:
        await self.js.publish(
            subject, message.SerializeToString(), headers={"Nats-Msg-Id": str(uuid.uuid4())}
        )


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
                prepaid_grace_minutes=15,
            )
            async with (
                bootstrap(settings) as roles,
                serving(roles, ("serve", "consume")) as target,
                grpc.aio.insecure_channel(target) as channel,
                grpc.aio.insecure_channel(points_target) as points_channel,
            ):
                yield World(
                    points_url,
                    channel,
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


def code_of(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    error = from_rpc_error(exc)
    assert error is not None
    return exc.code(), error.code


@dataclass(frozen=True)
class Scene:
    mall_id: str
    car_park_id: str
    credential: str
    member_id: str
    plate: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-mall-credential", self.credential),)


async def scene(world: World, unique_id: str, *, points: int, **policy: Any) -> Scene:
    """A car park (15 free minutes, then 5 yuan per started hour), a mall selling parking hours
    at 100 points (3 at most), and a member with ``points`` and a plate (not paying with
    points by itself: the member asks for it)."""
    mall_id, car_park_id = f"mall-{unique_id}", f"park-{unique_id}"
    secret, credential_id = uuid.uuid4().hex, f"cred-{unique_id}"
    bucket = await open_bucket(world.js, DIRECTORY_BUCKET)  # as member projects it
    await bucket.put(
        f"credential.{mall_id}.{credential_id}",
        directory_pb2.Credential(
            mall_id=mall_id,
            credential_id=credential_id,
            car_park_id=car_park_id,
            secret_hash=hash_secret(secret),
        ).SerializeToString(),
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
            policy=pb.ParkingPolicy(
                mall_id=mall_id, points_per_hour=100, points_max_hours=3, **policy
            )
        )
    )
    member_id = str(uuid.uuid4())
    plate = f"粤C{int(unique_id, 16) % 100_000:05d}"
    await world.parking.BindPlate(
        api.BindPlateRequest(
            mall_id=mall_id,
            member_id=member_id,
            plate_number=plate,
            plate_color=pb.PLATE_COLOR_BLUE,
        )
    )
    if points:
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
    s = Scene(mall_id, car_park_id, f"{credential_id}.{secret}", member_id, plate)

    async def admitted() -> bool:  # the car park's credential reached parking's copy
        try:
            await world.gates.SettleExit(
                api.SettleExitRequest(
                    mall_id=mall_id,
                    car_park_id=car_park_id,
                    session_id=str(uuid.uuid4()),
                    quote_id=str(uuid.uuid4()),
                    payment_method=pb.PAYMENT_METHOD_CASH,
                ),
                metadata=s.metadata,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return True

    await eventually(admitted, bool)
    return s


def gate(world: World, s: Scene) -> Gate:
    return Gate(
        world.channel, mall_id=s.mall_id, car_park_id=s.car_park_id, credential=s.credential
    )


async def account(world: World, s: Scene) -> tuple[int, int, int]:
    """(balance, held, available) at points."""
    reply = await world.points.GetAccount(
        points_service_pb2.GetAccountRequest(mall_id=s.mall_id, member_id=s.member_id)
    )
    return reply.account.balance, reply.account.held, reply.account.available


async def member_quote(
    world: World, s: Scene, *, use_points: bool, request_id: str = ""
) -> api.QuoteMemberExitResponse:
    return await world.parking.QuoteMemberExit(
        api.QuoteMemberExitRequest(
            mall_id=s.mall_id,
            member_id=s.member_id,
            use_points=use_points,
            request_id=request_id or uuid.uuid4().hex,
        )
    )


async def member_settle(
    world: World, s: Scene, q: api.QuoteMemberExitResponse, request_id: str, *, member: str = ""
) -> api.SettleMemberExitResponse:
    return await world.parking.SettleMemberExit(
        api.SettleMemberExitRequest(
            mall_id=s.mall_id,
            member_id=member or s.member_id,
            session_id=q.session.session_id,
            quote_id=q.quote.quote_id,
            request_id=request_id,
        )
    )


def points_line(quote: pb.ExitQuote) -> tuple[int, int, int]:
    (line,) = [b for b in quote.benefits if b.kind == pb.BENEFIT_KIND_POINTS]
    return line.free_minutes, line.points, line.discount_fen


async def pay(world: World, s: Scene, amount_fen: int, paid_at: datetime, tier: str = "") -> str:
    transaction_id = f"4200{uuid.uuid4().hex[:20]}"
    await world.publish(
        "member.payment.attributed",
        member_events.PaymentAttributed(
            mall_id=s.mall_id,
            member_id=s.member_id,
            tier_code=tier,
            tenant_id="coffee-corner",
            amount_fen=amount_fen,
            transaction_id=transaction_id,
            paid_at=timestamp(paid_at),
            occurred_at=timestamp(paid_at),
        ),
    )
    return transaction_id


# -- today's benefits, and what one payment added -------------------------------------------


async def test_todays_benefits_show_without_a_car_inside(world: World, unique_id: str) -> None:
    s = await scene(
        world,
        unique_id,
        points=0,
        tier_benefits=[pb.TierBenefit(tier_code="gold", free_minutes=120)],
        spend_step_fen=10_000,
        spend_step_minutes=60,
        spend_max_minutes=180,
    )
    now = datetime.now(UTC)
    await pay(world, s, 15_000, now, tier="gold")
    coupon_id = f"cp-{uuid.uuid4().hex[:12]}"
    await world.publish(
        "coupons.coupon.claimed",
        coupon_events.CouponClaimed(
            mall_id=s.mall_id,
            coupon_id=coupon_id,
            member_id=s.member_id,
            coupon_type=coupons_pb2.COUPON_TYPE_PARKING,
            parking_minutes=60,
            valid_until=timestamp(now + timedelta(days=30)),
        ),
    )
    request = api.GetMemberBenefitsRequest(mall_id=s.mall_id, member_id=s.member_id)

    today = await eventually(
        lambda: world.parking.GetMemberBenefits(request),
        lambda r: r.spend_today_fen > 0 and len(r.coupons) > 0,
    )

    day = datetime.fromisoformat(today.business_day).date()
    assert to_datetime(today.valid_until) == datetime.combine(
        day + timedelta(days=1), time(0), tzinfo=SH
    )
    assert (today.tier_code, today.tier_free_minutes) == ("gold", 120)
    assert (today.spend_today_fen, today.spend_free_minutes) == (15_000, 60)
    assert (today.next_step_spend_fen, today.next_step_free_minutes) == (5_000, 120)
    assert today.spend_max_minutes == 180
    assert [(c.coupon_id, c.free_minutes) for c in today.coupons] == [(coupon_id, 60)]
    assert (today.points_per_hour, today.points_max_hours) == (100, 3)
    assert today.free_minutes_today == 120 + 60 + 60


async def test_a_payment_shows_the_minutes_it_added_less_its_refund(
    world: World, unique_id: str
) -> None:
    s = await scene(
        world,
        unique_id,
        points=0,
        spend_step_fen=10_000,
        spend_step_minutes=60,
        spend_max_minutes=120,
    )
    day = datetime(2026, 3, 10, tzinfo=SH)
    small = await pay(world, s, 6_000, day.replace(hour=10))  # 60 yuan: no step yet
    raising = await pay(world, s, 6_000, day.replace(hour=11))  # 120 yuan: the first step
    big = await pay(world, s, 20_000, day.replace(hour=12))  # 320 yuan: capped at 2 hours
    tomorrow = await pay(world, s, 10_000, day.replace(hour=9) + timedelta(days=1))

    async def benefit(transaction_id: str, member_id: str = "") -> api.GetPaymentBenefitResponse:
        return await world.parking.GetPaymentBenefit(
            api.GetPaymentBenefitRequest(
                mall_id=s.mall_id,
                member_id=member_id or s.member_id,
                transaction_id=transaction_id,
            )
        )

    async def known(transaction_id: str) -> bool:
        try:
            await benefit(transaction_id)
        except grpc.aio.AioRpcError:
            return False
        return True

    for transaction_id in (small, raising, big, tomorrow):
        await eventually(lambda t=transaction_id: known(t), bool)  # type: ignore[misc]
    before = [(await benefit(t)).free_minutes for t in (small, raising, big, tomorrow)]
    first = await benefit(raising)

    await world.publish(
        "member.refund.attributed",
        member_events.RefundAttributed(
            mall_id=s.mall_id,
            member_id=s.member_id,
            transaction_id=raising,
            refund_id=f"5030{uuid.uuid4().hex[:20]}",
            refund_amount_fen=3_000,
        ),
    )
    refunded = await eventually(lambda: benefit(raising), lambda r: r.spend_after_fen == 9_000)
    later = await benefit(big)

    assert before == [0, 60, 60, 60]
    assert (first.business_day, first.spend_before_fen, first.spend_after_fen) == (
        "2026-03-10",
        6_000,
        12_000,
    )
    assert refunded.free_minutes == 0  # 90 yuan by then: below the step
    assert (later.spend_before_fen, later.free_minutes) == (9_000, 120)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await benefit(small, member_id=str(uuid.uuid4()))  # not that member's payment
    assert code_of(caught.value) == (grpc.StatusCode.NOT_FOUND, "payment_not_found")


# -- settling before leaving -----------------------------------------------------------------


async def test_a_member_prepays_with_points_and_the_exit_opens_without_payment(
    world: World, unique_id: str
) -> None:
    s = await scene(world, unique_id, points=500)
    now = datetime.now(UTC)
    await gate(world, s).enter(s.plate, "BLUE", now - timedelta(hours=2, minutes=30))

    quoted = await member_quote(world, s, use_points=True, request_id=f"q-{unique_id}")
    again = await member_quote(world, s, use_points=True, request_id=f"q-{unique_id}")
    assert again.quote.quote_id == quoted.quote.quote_id
    assert points_line(quoted.quote) == (180, 300, 1500)
    assert quoted.quote.payable_fen == 0
    assert await account(world, s) == (500, 300, 200)  # held once, for the one request

    settled = await member_settle(world, s, quoted, f"s-{unique_id}")
    repeated = await member_settle(world, s, quoted, f"s-{unique_id}")

    assert settled.session.status == pb.SESSION_STATUS_OPEN  # the car is still inside
    assert to_datetime(settled.leave_by) - to_datetime(settled.session.prepaid_at) == timedelta(
        minutes=15
    )
    assert repeated.leave_by == settled.leave_by
    assert repeated.quote.quote_id == settled.quote.quote_id == quoted.quote.quote_id
    assert await eventually(lambda: account(world, s), lambda a: a == (200, 0, 200))

    at_gate = await gate(world, s).quote(s.plate, to_datetime(settled.leave_by))
    assert (at_gate.prepaid, at_gate.gate_may_open, at_gate.quote.payable_fen) == (True, True, 0)
    left = await gate(world, s).leave(s.plate, to_datetime(settled.leave_by))

    assert (left.paid_fen, left.method, left.discount_fen) == (0, "POINTS", 1500)
    assert left.session_id == quoted.session.session_id
    await asyncio.sleep(0.2)  # a wrong second charge would be on its way by now
    assert await account(world, s) == (200, 0, 200)  # the points went once
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await member_quote(world, s, use_points=True)
    assert code_of(caught.value) == (grpc.StatusCode.NOT_FOUND, "session_not_found")


async def test_a_member_cannot_settle_another_members_stay_nor_leave_money_owing(
    world: World, unique_id: str
) -> None:
    s = await scene(world, unique_id, points=0)
    now = datetime.now(UTC)
    await gate(world, s).enter(s.plate, "BLUE", now - timedelta(minutes=50))
    quoted = await member_quote(world, s, use_points=True)  # no points to buy the hour with
    stranger = str(uuid.uuid4())

    with pytest.raises(grpc.aio.AioRpcError) as theirs:
        await member_settle(world, s, quoted, uuid.uuid4().hex, member=stranger)
    with pytest.raises(grpc.aio.AioRpcError) as owing:
        await member_settle(world, s, quoted, uuid.uuid4().hex)
    with pytest.raises(grpc.aio.AioRpcError) as none_inside:
        await world.parking.QuoteMemberExit(
            api.QuoteMemberExitRequest(mall_id=s.mall_id, member_id=stranger)
        )

    assert code_of(theirs.value) == (grpc.StatusCode.NOT_FOUND, "session_not_found")
    assert (quoted.quote.payable_fen, list(quoted.quote.benefits)) == (500, [])
    assert code_of(owing.value) == (grpc.StatusCode.FAILED_PRECONDITION, "payment_required")
    assert code_of(none_inside.value) == (grpc.StatusCode.NOT_FOUND, "session_not_found")
    at_gate = await gate(world, s).quote(s.plate, now)
    assert (at_gate.prepaid, at_gate.quote.payable_fen) == (False, 500)


async def test_after_the_grace_period_the_exit_charges_the_extra_time(
    world: World, unique_id: str
) -> None:
    s = await scene(world, unique_id, points=500)
    now = datetime.now(UTC)
    await gate(world, s).enter(s.plate, "BLUE", now - timedelta(minutes=50))
    quoted = await member_quote(world, s, use_points=True)
    assert points_line(quoted.quote) == (60, 100, 500)
    settled = await member_settle(world, s, quoted, uuid.uuid4().hex)
    leave_by = to_datetime(settled.leave_by)

    in_time = await gate(world, s).quote(s.plate, leave_by - timedelta(minutes=1))
    late = await gate(world, s).quote(s.plate, leave_by + timedelta(minutes=1))

    assert (in_time.prepaid, in_time.quote.payable_fen, in_time.gate_may_open) == (True, 0, True)
    # 50 + 15 + 1 minutes: two started hours; the hour bought with points covers the first.
    assert (late.quote.gross_fee_fen, late.quote.payable_fen, late.gate_may_open) == (
        1000,
        500,
        False,
    )
    assert points_line(late.quote) == (60, 100, 500)
    left = await gate(world, s).leave(s.plate, leave_by + timedelta(minutes=1))
    assert (left.method, left.paid_fen) == ("PAID_AT_EXIT", 500)
    assert await eventually(lambda: account(world, s), lambda a: a == (400, 0, 400))


async def test_a_gate_quote_made_before_the_member_settled_is_void(
    world: World, unique_id: str
) -> None:
    s = await scene(world, unique_id, points=500)
    now = datetime.now(UTC)
    lane = gate(world, s)
    await lane.enter(s.plate, "BLUE", now - timedelta(minutes=50))
    early = await lane.quote(s.plate, now)  # the car is at the exit as the member pays
    quoted = await member_quote(world, s, use_points=True)
    await member_settle(world, s, quoted, uuid.uuid4().hex)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await lane.settle(early, "PAID_AT_EXIT", early.quote.payable_fen)
    again = await lane.quote(s.plate, now)

    assert (early.prepaid, early.quote.payable_fen) == (False, 500)
    assert code_of(caught.value) == (grpc.StatusCode.FAILED_PRECONDITION, "quote_expired")
    assert (again.prepaid, again.quote.payable_fen, again.gate_may_open) == (True, 0, True)
