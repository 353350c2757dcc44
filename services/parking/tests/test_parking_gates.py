"""The parking service over gRPC on real PostgreSQL and NATS: the car park's gates, plates,
benefits from member's events, anomalies for the operator and the day's figures."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import nats
import pytest
from google.protobuf.message import Message
from kit.cli import serving
from kit.credentials import hash_secret
from kit.grpc_errors import from_rpc_error
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.migrations import migrate
from kit.proto import timestamp
from mall.coupons.v1 import coupons_pb2
from mall.coupons.v1 import events_pb2 as coupon_events
from mall.member.v1 import directory_pb2
from mall.member.v1 import events_pb2 as member_events
from mall.parking.v1 import events_pb2 as parking_events
from mall.parking.v1 import parking_pb2 as pb
from mall.parking.v1 import parking_service_pb2 as api
from mall.parking.v1 import parking_service_pb2_grpc as stubs
from mall_testing.plugin import FreshDatabase
from nats.js.client import JetStreamContext
from parking.adapters import plates as plates_sql
from parking.bootstrap import MIGRATIONS, bootstrap
from parking.config import Settings

SH = ZoneInfo("Asia/Shanghai")
T = TypeVar("T")


@dataclass
class World:
    database_url: str
    js: JetStreamContext
    parking: stubs.ParkingServiceAsyncStub
    gates: stubs.CarParkServiceAsyncStub
    admin: stubs.ParkingAdminServiceAsyncStub

    async def publish(self, subject: str, message: Message) -> None:
        await self.js.publish(
            subject, message.SerializeToString(), headers={"Nats-Msg-Id": str(uuid.uuid4())}
        )


@pytest.fixture(scope="module")
async def world(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[World]:
    url = await fresh_database("parking")
    await migrate(url, MIGRATIONS)
    settings = Settings(
        database_url=url,
        nats_url=nats_url,
        grpc_port=0,
        log_level="warning",
        points_grpc_target="",
        consumer_batch_size=50,
    )
    nc = await nats.connect(nats_url)
    try:
        async with (
            bootstrap(settings) as roles,
            serving(roles, ("serve", "consume", "relay")) as target,
            grpc.aio.insecure_channel(target) as channel,
        ):
            yield World(
                url,
                nc.jetstream(),
                stubs.ParkingServiceStub(channel),
                stubs.CarParkServiceStub(channel),
                stubs.ParkingAdminServiceStub(channel),
            )
    finally:
        await nc.close()


@dataclass(frozen=True)
class CarPark:
    mall_id: str
    car_park_id: str
    credential: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-mall-credential", self.credential),)


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    for _ in range(200):
        value = await probe()
        if done(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened; last value {value!r}")


async def car_park(world: World, unique_id: str, **schedule: Any) -> CarPark:
    """A mall with one car park, its credential (as member would publish it) and a tariff:
    15 free minutes, 5 yuan per started hour, 30 yuan a day unless told otherwise."""
    mall_id, car_park_id = f"mall-{unique_id}", f"park-{unique_id}"
    secret = uuid.uuid4().hex
    credential_id = f"cred-{unique_id}"
    await world.publish(
        "member.directory.car_park_upserted",
        member_events.CarParkUpserted(
            mall_id=mall_id,
            car_park=directory_pb2.CarPark(mall_id=mall_id, car_park_id=car_park_id, name="P1"),
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
    fields = {"free_minutes": 15, "unit_minutes": 60, "unit_fee_fen": 500, "daily_cap_fen": 3000}
    await world.admin.PutFeeSchedule(
        api.PutFeeScheduleRequest(
            schedule=pb.FeeSchedule(
                mall_id=mall_id,
                car_park_id=car_park_id,
                effective_from=timestamp(datetime(2020, 1, 1, tzinfo=UTC)),
                **(fields | schedule),
            )
        )
    )
    park = CarPark(mall_id, car_park_id, f"{credential_id}.{secret}")

    async def ready() -> bool:
        try:
            await world.gates.SettleExit(
                api.SettleExitRequest(
                    mall_id=mall_id,
                    car_park_id=car_park_id,
                    session_id=str(uuid.uuid4()),
                    quote_id=str(uuid.uuid4()),
                    payment_method=pb.PAYMENT_METHOD_CASH,
                ),
                metadata=park.metadata,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE):
                return False  # the directory copy is loading, or has not got it yet
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: let in, nothing changed
                raise
        return True

    await eventually(ready, bool)
    return park


def plate_for(unique_id: str, province: str = "粤") -> str:
    digits = str(int(unique_id, 16) % 100_000).zfill(5)
    return f"{province}B{digits}"


async def enter(
    world: World, park: CarPark, plate: str, at: datetime, ref: str | None = None
) -> api.RecordEntryResponse:
    return await world.gates.RecordEntry(
        api.RecordEntryRequest(
            mall_id=park.mall_id,
            car_park_id=park.car_park_id,
            plate_number=plate,
            plate_color=pb.PLATE_COLOR_BLUE,
            entered_at=timestamp(at),
            entry_ref=ref or uuid.uuid4().hex,
            gate_id="in-1",
        ),
        metadata=park.metadata,
    )


async def quote(world: World, park: CarPark, plate: str, at: datetime) -> api.QuoteExitResponse:
    return await world.gates.QuoteExit(
        api.QuoteExitRequest(
            mall_id=park.mall_id,
            car_park_id=park.car_park_id,
            plate_number=plate,
            exit_at=timestamp(at),
            gate_id="out-1",
        ),
        metadata=park.metadata,
    )


async def settle(
    world: World,
    park: CarPark,
    reply: api.QuoteExitResponse,
    method: int,
    paid_fen: int = 0,
) -> api.SettleExitResponse:
    return await world.gates.SettleExit(
        api.SettleExitRequest(
            mall_id=park.mall_id,
            car_park_id=park.car_park_id,
            session_id=reply.session.session_id,
            quote_id=reply.quote.quote_id,
            paid_fen=paid_fen,
            exited_at=reply.quote.quoted_at,
            payment_method=method,  # type: ignore[arg-type]
        ),
        metadata=park.metadata,
    )


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    return caught.value.code(), error.code if error else ""


def local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=SH)


# -- fees at the gate -----------------------------------------------------------------------


async def test_a_stay_on_the_free_minute_boundary_leaves_free(world: World, unique_id: str) -> None:
    park = await car_park(world, unique_id)
    plate = plate_for(unique_id)
    entered = local(20, 10)
    session = (await enter(world, park, plate, entered)).session

    on_boundary = await quote(world, park, plate, entered + timedelta(minutes=15))
    one_second_more = await quote(world, park, plate, entered + timedelta(minutes=15, seconds=1))

    assert on_boundary.session.session_id == session.session_id
    assert (on_boundary.quote.gross_fee_fen, on_boundary.quote.payable_fen) == (0, 0)
    assert on_boundary.gate_may_open
    assert one_second_more.quote.payable_fen == 500
    assert not one_second_more.gate_may_open
    settled = await settle(world, park, on_boundary, pb.PAYMENT_METHOD_BENEFITS_ONLY)
    assert settled.session.status == pb.SESSION_STATUS_SETTLED
    assert settled.gate_may_open


async def test_across_midnight_and_a_three_day_stay(world: World, unique_id: str) -> None:
    park = await car_park(
        world,
        unique_id,
        night_start_minute=22 * 60,
        night_end_minute=7 * 60,
        night_unit_fee_fen=100,
    )
    night_plate, long_plate = plate_for(unique_id, "沪"), plate_for(unique_id, "京")
    await enter(world, park, night_plate, local(20, 21, 0))
    await enter(world, park, long_plate, local(20, 9, 0))

    # 21:00 day hour (5 yuan), 22:00..00:00 night hours (1 yuan each), then 00:00 on the 21st.
    night = await quote(world, park, night_plate, local(21, 0, 30))
    # 9:00 on the 20th to 18:00 on the 22nd: three calendar days, each capped at 30 yuan.
    long = await quote(world, park, long_plate, local(22, 18, 0))

    assert night.quote.gross_fee_fen == 500 + 100 + 100 + 100
    assert long.quote.gross_fee_fen == 3 * 3000
    assert long.quote.parked_minutes == (2 * 24 + 9) * 60


# -- the gates as a real car park sees them --------------------------------------------------


async def test_a_resent_entry_is_one_session(world: World, unique_id: str) -> None:
    park = await car_park(world, unique_id)
    plate = plate_for(unique_id)

    first = await enter(world, park, plate, local(20, 9), ref=f"gate-{unique_id}")
    again = await enter(world, park, plate, local(20, 9), ref=f"gate-{unique_id}")

    assert not first.duplicate
    assert again.duplicate
    assert again.session.session_id == first.session.session_id
    figures = await world.admin.GetDailyFigures(
        api.GetDailyFiguresRequest(mall_id=park.mall_id, business_day="2026-11-20")
    )
    assert [(f.car_park_id, f.sessions_started) for f in figures.car_parks] == [
        (park.car_park_id, 1)
    ]


async def test_an_exit_without_entry_is_charged_the_flat_fee_and_recorded(
    world: World, unique_id: str
) -> None:
    park = await car_park(world, unique_id, missing_entry_fee_fen=2000)
    plate = plate_for(unique_id)

    reply = await quote(world, park, plate, local(20, 18))
    settled = await settle(world, park, reply, pb.PAYMENT_METHOD_CASH, paid_fen=2000)

    assert reply.session.entry_missing
    assert (reply.quote.payable_fen, reply.gate_may_open) == (2000, False)
    assert settled.session.paid_fen == 2000
    anomalies = await world.admin.ListAnomalies(api.ListAnomaliesRequest(mall_id=park.mall_id))
    assert [(a.kind, a.plate_number, a.session_id) for a in anomalies.anomalies] == [
        ("exit_without_entry", plate, reply.session.session_id)
    ]


async def test_a_second_entry_without_exit_closes_the_first_for_the_operator(
    world: World, unique_id: str
) -> None:
    park = await car_park(world, unique_id)
    plate = plate_for(unique_id)

    first = await enter(world, park, plate, local(20, 9))
    second = await enter(world, park, plate, local(20, 15))
    reply = await quote(world, park, plate, local(20, 16))

    assert second.session.session_id != first.session.session_id
    assert reply.session.session_id == second.session.session_id
    assert reply.quote.gross_fee_fen == 500  # priced from the second entry
    old = await world.admin.GetSession(
        api.GetSessionRequest(mall_id=park.mall_id, session_id=first.session.session_id)
    )
    assert old.session.status == pb.SESSION_STATUS_ABANDONED
    anomalies = await world.admin.ListAnomalies(api.ListAnomaliesRequest(mall_id=park.mall_id))
    assert [(a.kind, a.session_id) for a in anomalies.anomalies] == [
        ("entry_while_inside", first.session.session_id)
    ]
    code, reason = await refused(
        world.gates.SettleExit(
            api.SettleExitRequest(
                mall_id=park.mall_id,
                car_park_id=park.car_park_id,
                session_id=first.session.session_id,
                quote_id=reply.quote.quote_id,
                payment_method=pb.PAYMENT_METHOD_CASH,
            ),
            metadata=park.metadata,
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "session_closed")


async def test_settling_twice_is_harmless_and_an_old_quote_is_refused(
    world: World, unique_id: str
) -> None:
    park = await car_park(world, unique_id)
    plate = plate_for(unique_id)
    await enter(world, park, plate, local(20, 9))
    reply = await quote(world, park, plate, local(20, 11))

    first = await settle(world, park, reply, pb.PAYMENT_METHOD_PAID_AT_EXIT, paid_fen=1000)
    again = await settle(world, park, reply, pb.PAYMENT_METHOD_PAID_AT_EXIT, paid_fen=1000)

    assert first.session == again.session
    assert (first.session.gross_fee_fen, first.session.paid_fen) == (1000, 1000)
    await enter(world, park, plate, local(20, 12))
    late = await quote(world, park, plate, local(20, 13))
    late_settle = api.SettleExitRequest(
        mall_id=park.mall_id,
        car_park_id=park.car_park_id,
        session_id=late.session.session_id,
        quote_id=late.quote.quote_id,
        exited_at=timestamp(local(20, 14)),  # 15 minutes is the quote's validity
        payment_method=pb.PAYMENT_METHOD_CASH,
        paid_fen=500,
    )
    code, reason = await refused(world.gates.SettleExit(late_settle, metadata=park.metadata))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "quote_expired")


async def test_car_park_credentials_are_checked(world: World, unique_id: str) -> None:
    park = await car_park(world, unique_id)
    other = await car_park(world, uuid.uuid4().hex[:12])
    request = api.QuoteExitRequest(
        mall_id=park.mall_id, car_park_id=park.car_park_id, plate_number=plate_for(unique_id)
    )

    missing = await refused(world.gates.QuoteExit(request))
    wrong = await refused(
        world.gates.QuoteExit(request, metadata=(("x-mall-credential", park.credential + "x"),))
    )
    not_yours = await refused(world.gates.QuoteExit(request, metadata=other.metadata))
    on_gateway_api = await refused(
        world.parking.ListPlates(
            api.ListPlatesRequest(mall_id=park.mall_id, member_id=str(uuid.uuid4())),
            metadata=park.metadata,
        )
    )

    assert missing == (grpc.StatusCode.UNAUTHENTICATED, "invalid_credential")
    assert wrong == (grpc.StatusCode.UNAUTHENTICATED, "invalid_credential")
    assert not_yours == (grpc.StatusCode.PERMISSION_DENIED, "car_park_not_yours")
    assert on_gateway_api == (grpc.StatusCode.PERMISSION_DENIED, "rpc_not_for_car_parks")


# -- plates -----------------------------------------------------------------------------------


def bind(park: CarPark, member_id: str, plate: str, color: int = pb.PLATE_COLOR_BLUE) -> Any:
    return api.BindPlateRequest(
        mall_id=park.mall_id,
        member_id=member_id,
        plate_number=plate,
        plate_color=color,  # type: ignore[arg-type]
    )


async def test_a_plate_belongs_to_one_member_and_rebinding_is_audited(
    world: World, unique_id: str
) -> None:
    park = CarPark(f"mall-{unique_id}", "", "")
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    plate = plate_for(unique_id)

    bound = await world.parking.BindPlate(bind(park, alice, plate.lower()))
    again = await world.parking.BindPlate(bind(park, alice, plate))
    taken = await refused(world.parking.BindPlate(bind(park, bob, plate)))
    await world.parking.UnbindPlate(
        api.UnbindPlateRequest(mall_id=park.mall_id, member_id=alice, plate_number=plate)
    )
    rebound = await world.parking.BindPlate(bind(park, bob, plate))

    assert bound.plate.plate_number == plate
    assert again.plate == bound.plate
    assert taken == (grpc.StatusCode.FAILED_PRECONDITION, "plate_bound_elsewhere")
    assert rebound.plate.member_id == bob
    alice_plates = await world.parking.ListPlates(
        api.ListPlatesRequest(mall_id=park.mall_id, member_id=alice)
    )
    assert list(alice_plates.plates) == []
    conn = await asyncpg.connect(world.database_url)
    try:
        trail = await plates_sql.history(conn, park.mall_id, plate)
    finally:
        await conn.close()
    assert trail == [
        (alice, "bound"),
        (bob, "refused"),
        (alice, "unbound"),
        (bob, "bound"),
    ]


async def test_plates_are_validated_and_limited_per_member(world: World, unique_id: str) -> None:
    park = CarPark(f"mall-{unique_id}", "", "")
    member = str(uuid.uuid4())

    invalid = await refused(world.parking.BindPlate(bind(park, member, "ABC123")))
    wrong_colour = await refused(
        world.parking.BindPlate(bind(park, member, "粤B12345", pb.PLATE_COLOR_GREEN))
    )
    for n in range(3):
        await world.parking.BindPlate(bind(park, member, f"苏E1234{n}"))
    fourth = await refused(world.parking.BindPlate(bind(park, member, "苏E12349")))
    green = await refused(
        world.parking.BindPlate(bind(park, member, "苏ED12345", pb.PLATE_COLOR_GREEN))
    )

    assert invalid == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_plate")
    assert wrong_colour == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_plate")
    assert fourth == (grpc.StatusCode.FAILED_PRECONDITION, "too_many_plates")
    assert green == (grpc.StatusCode.FAILED_PRECONDITION, "too_many_plates")


# -- benefits from member's events ------------------------------------------------------------


async def policy(world: World, mall_id: str, **fields: Any) -> None:
    await world.admin.PutParkingPolicy(
        api.PutParkingPolicyRequest(policy=pb.ParkingPolicy(mall_id=mall_id, **fields))
    )


async def pay(
    world: World,
    mall_id: str,
    member_id: str,
    amount_fen: int,
    paid_at: datetime,
    *,
    tier_code: str = "",
) -> str:
    transaction_id = f"4200{uuid.uuid4().hex[:20]}"
    await world.publish(
        "member.payment.attributed",
        member_events.PaymentAttributed(
            mall_id=mall_id,
            member_id=member_id,
            tier_code=tier_code,
            tenant_id="coffee-corner",
            amount_fen=amount_fen,
            transaction_id=transaction_id,
            paid_at=timestamp(paid_at),
            occurred_at=timestamp(paid_at),
        ),
    )
    return transaction_id


async def refund(
    world: World, mall_id: str, member_id: str, transaction_id: str, amount_fen: int
) -> None:
    await world.publish(
        "member.refund.attributed",
        member_events.RefundAttributed(
            mall_id=mall_id,
            member_id=member_id,
            transaction_id=transaction_id,
            refund_id=f"5030{uuid.uuid4().hex[:20]}",
            refund_amount_fen=amount_fen,
        ),
    )


def minutes_by_kind(reply: api.QuoteExitResponse) -> dict[int, int]:
    return {b.kind: b.free_minutes for b in reply.quote.benefits}


async def test_spend_raised_by_a_payment_and_lowered_by_its_refund(
    world: World, unique_id: str
) -> None:
    park = await car_park(world, unique_id)
    await policy(
        world, park.mall_id, spend_step_fen=10_000, spend_step_minutes=60, spend_max_minutes=240
    )
    member = str(uuid.uuid4())
    plate = plate_for(unique_id)
    await world.parking.BindPlate(bind(park, member, plate))
    await enter(world, park, plate, local(20, 10))
    exit_at = local(20, 15, 30)  # 6 started hours: 30 yuan (the cap)

    transaction_id = await pay(world, park.mall_id, member, 25_000, local(20, 11))
    raised = await eventually(
        lambda: quote(world, park, plate, exit_at),
        lambda r: pb.BENEFIT_KIND_SPEND in minutes_by_kind(r),
    )
    await refund(world, park.mall_id, member, transaction_id, 20_000)
    lowered = await eventually(
        lambda: quote(world, park, plate, exit_at),
        lambda r: minutes_by_kind(r).get(pb.BENEFIT_KIND_SPEND) != 120,
    )

    assert minutes_by_kind(raised) == {pb.BENEFIT_KIND_SPEND: 120}
    assert (raised.quote.gross_fee_fen, raised.quote.payable_fen) == (3000, 2000)
    assert minutes_by_kind(lowered) == {}  # 50 yuan left: below one step
    assert lowered.quote.payable_fen == 3000


async def test_a_payment_made_while_the_car_waits_at_the_exit_counts(
    world: World, unique_id: str
) -> None:
    park = await car_park(world, unique_id)
    await policy(
        world,
        park.mall_id,
        tier_benefits=[pb.TierBenefit(tier_code="gold", free_minutes=180)],
        spend_step_fen=10_000,
        spend_step_minutes=60,
        spend_max_minutes=240,
    )
    member = str(uuid.uuid4())
    plate = plate_for(unique_id)
    await world.parking.BindPlate(bind(park, member, plate))
    await enter(world, park, plate, local(20, 10))
    at_gate = local(20, 15, 30)
    before = await quote(world, park, plate, at_gate)
    assert before.quote.payable_fen == 3000

    # The shopper pays at a store on the phone while the car sits at the barrier.
    await pay(world, park.mall_id, member, 30_000, local(20, 15, 28), tier_code="gold")
    after = await eventually(
        lambda: quote(world, park, plate, at_gate), lambda r: r.quote.payable_fen == 0
    )
    settled = await settle(world, park, after, pb.PAYMENT_METHOD_BENEFITS_ONLY)

    assert minutes_by_kind(after) == {pb.BENEFIT_KIND_TIER: 180, pb.BENEFIT_KIND_SPEND: 180}
    assert [b.discount_fen for b in after.quote.benefits] == [1500, 1500]
    assert after.gate_may_open
    assert (settled.session.discount_fen, settled.session.paid_fen) == (3000, 0)
    detail = await world.admin.GetSession(
        api.GetSessionRequest(mall_id=park.mall_id, session_id=after.session.session_id)
    )
    assert [b.kind for b in detail.benefits] == [pb.BENEFIT_KIND_TIER, pb.BENEFIT_KIND_SPEND]
    figures = await world.admin.GetDailyFigures(
        api.GetDailyFiguresRequest(mall_id=park.mall_id, business_day="2026-11-20")
    )
    (day,) = figures.car_parks
    assert (day.sessions_settled, day.benefit_minutes, day.revenue_fen) == (1, 360, 0)
    assert (day.gross_fee_fen, day.discount_fen, day.visitor_sessions) == (3000, 3000, 0)


# -- parking-hour coupons ---------------------------------------------------------------------


async def claim_coupon(
    world: World, mall_id: str, member_id: str, minutes: int, *, revoke: bool = False
) -> str:
    coupon_id = f"cp-{uuid.uuid4().hex[:12]}"
    await world.publish(
        "coupons.coupon.claimed",
        coupon_events.CouponClaimed(
            mall_id=mall_id,
            coupon_id=coupon_id,
            member_id=member_id,
            coupon_type=coupons_pb2.COUPON_TYPE_PARKING,
            parking_minutes=minutes,
            valid_from=timestamp(datetime(2026, 1, 1, tzinfo=UTC)),
            valid_until=timestamp(datetime(2027, 1, 1, tzinfo=UTC)),
        ),
    )
    if revoke:
        await world.publish(
            "coupons.coupon.revoked",
            coupon_events.CouponRevoked(mall_id=mall_id, coupon_id=coupon_id, member_id=member_id),
        )
    return coupon_id


async def settled_event(world: World, session_id: str) -> parking_events.SessionSettled:
    sub = await world.js.subscribe("parking.session.settled", ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            event = parking_events.SessionSettled.FromString(msg.data)
            if event.session_id == session_id:
                return event
    finally:
        await sub.unsubscribe()


async def test_parking_coupons_cover_what_they_can_and_are_named_in_the_settled_event(
    world: World, unique_id: str
) -> None:
    park = await car_park(world, unique_id)
    member = str(uuid.uuid4())
    plate = plate_for(unique_id)
    await world.parking.BindPlate(bind(park, member, plate))
    first = await claim_coupon(world, park.mall_id, member, 60)
    revoked = await claim_coupon(world, park.mall_id, member, 600, revoke=True)
    await enter(world, park, plate, local(20, 10))
    exit_at = local(20, 11, 40)  # 2 started hours: 10 yuan

    one = await eventually(
        lambda: quote(world, park, plate, exit_at),
        lambda r: [b.coupon_id for b in r.quote.benefits] == [first],
    )
    second = await claim_coupon(world, park.mall_id, member, 60)
    spare = await claim_coupon(world, park.mall_id, member, 60)
    both = await eventually(
        lambda: quote(world, park, plate, exit_at),
        lambda r: r.quote.payable_fen == 0,
    )
    settled = await settle(world, park, both, pb.PAYMENT_METHOD_BENEFITS_ONLY)

    assert one.quote.payable_fen == 500
    used = sorted(b.coupon_id for b in both.quote.benefits)
    assert len(used) == 2
    assert set(used) < {first, second, spare}  # never the revoked one
    assert all(b.kind == pb.BENEFIT_KIND_COUPON for b in both.quote.benefits)
    assert settled.session.discount_fen == 1000
    event = await settled_event(world, settled.session.session_id)
    assert sorted(b.coupon_id for b in event.benefits) == used
    assert (event.discount_fen, event.paid_fen) == (1000, 0)
    # The coupon left over serves the next stay; the used ones do not.
    await enter(world, park, plate, local(21, 10))
    later = await quote(world, park, plate, local(21, 11))
    assert [b.coupon_id for b in later.quote.benefits] == list({first, second, spare} - set(used))
    assert revoked not in [b.coupon_id for b in later.quote.benefits]


async def test_a_merge_moves_plates_and_spend_to_the_survivor_who_sees_the_stay(
    world: World, unique_id: str
) -> None:
    park = await car_park(world, unique_id)
    await policy(
        world, park.mall_id, spend_step_fen=10_000, spend_step_minutes=60, spend_max_minutes=240
    )
    absorbed, survivor = str(uuid.uuid4()), str(uuid.uuid4())
    plate = plate_for(unique_id)
    await world.parking.BindPlate(bind(park, absorbed, plate))
    entered_at = datetime.now(UTC) - timedelta(minutes=170)
    await pay(world, park.mall_id, absorbed, 20_000, entered_at + timedelta(minutes=5))
    await world.publish(
        "member.identity.merged",
        member_events.IdentityMerged(
            mall_id=park.mall_id,
            survivor_member_id=survivor,
            merged_member_id=absorbed,
            merge_request_id=uuid.uuid4().hex,
        ),
    )
    plates = await eventually(
        lambda: world.parking.ListPlates(
            api.ListPlatesRequest(mall_id=park.mall_id, member_id=survivor)
        ),
        lambda r: len(r.plates) == 1,
    )
    entry = await enter(world, park, plate, entered_at)

    stay = await eventually(
        lambda: world.parking.GetSessionForMember(
            api.GetSessionForMemberRequest(mall_id=park.mall_id, member_id=survivor)
        ),
        lambda r: bool(r.preview.benefits),
    )

    assert plates.plates[0].plate_number == plate
    assert entry.session.member_id == survivor
    assert stay.session.session_id == entry.session.session_id
    assert [(b.kind, b.free_minutes) for b in stay.preview.benefits] == [
        (pb.BENEFIT_KIND_SPEND, 120)
    ]
    assert stay.preview.payable_fen == stay.preview.gross_fee_fen - 1000
    nothing = await world.parking.GetSessionForMember(
        api.GetSessionForMemberRequest(mall_id=park.mall_id, member_id=absorbed)
    )
    assert not nothing.HasField("session")
    conn = await asyncpg.connect(world.database_url)
    try:
        trail = await plates_sql.history(conn, park.mall_id, plate)
    finally:
        await conn.close()
    assert trail == [(absorbed, "bound"), (survivor, "moved")]


async def test_a_refund_that_arrives_before_its_payment_still_lowers_the_spend(
    world: World, unique_id: str
) -> None:
    park = await car_park(world, unique_id)
    await policy(
        world, park.mall_id, spend_step_fen=10_000, spend_step_minutes=60, spend_max_minutes=240
    )
    member = str(uuid.uuid4())
    plate = plate_for(unique_id)
    await world.parking.BindPlate(bind(park, member, plate))
    await enter(world, park, plate, local(20, 10))
    transaction_id = f"4200{uuid.uuid4().hex[:20]}"
    await refund(world, park.mall_id, member, transaction_id, 15_000)
    kept = await pay(world, park.mall_id, member, 10_000, local(20, 11))  # another payment
    await world.publish(
        "member.payment.attributed",
        member_events.PaymentAttributed(
            mall_id=park.mall_id,
            member_id=member,
            amount_fen=30_000,
            transaction_id=transaction_id,
            paid_at=timestamp(local(20, 11)),
            occurred_at=timestamp(local(20, 11)),
        ),
    )

    # Refunds and payments reach parking on two consumers, in either order; either way the
    # day ends at 100 yuan + (300 - 150) yuan = 250 yuan: two steps (four without the refund).
    reply = await eventually(
        lambda: quote(world, park, plate, local(20, 16)),
        lambda r: minutes_by_kind(r) == {pb.BENEFIT_KIND_SPEND: 120},
    )

    assert kept != transaction_id
    assert minutes_by_kind(reply) == {pb.BENEFIT_KIND_SPEND: 120}


async def test_two_members_binding_one_plate_at_once_end_with_one_holder(
    world: World, unique_id: str
) -> None:
    park = CarPark(f"mall-{unique_id}", "", "")
    plate = plate_for(unique_id)
    members = [str(uuid.uuid4()) for _ in range(6)]

    outcomes = await asyncio.gather(
        *(world.parking.BindPlate(bind(park, m, plate)) for m in members),
        return_exceptions=True,
    )

    winners = [o for o in outcomes if isinstance(o, api.BindPlateResponse)]
    losers = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == len(members) - 1
    errors = [from_rpc_error(e) for e in losers]
    assert {e.code if e else "" for e in errors} == {"plate_bound_elsewhere"}


async def test_a_stay_is_priced_by_the_schedule_in_force_at_its_entry(
    world: World, unique_id: str
) -> None:
    park = await car_park(world, unique_id)  # v1: 5 yuan an hour since 2020
    await world.admin.PutFeeSchedule(
        api.PutFeeScheduleRequest(
            schedule=pb.FeeSchedule(
                mall_id=park.mall_id,
                car_park_id=park.car_park_id,
                free_minutes=0,
                unit_minutes=30,
                unit_fee_fen=400,
                effective_from=timestamp(local(20, 12)),
            )
        )
    )
    before, after = plate_for(unique_id, "沪"), plate_for(unique_id, "京")
    await enter(world, park, before, local(20, 11))
    await enter(world, park, after, local(20, 12))

    old = await quote(world, park, before, local(20, 13))
    new = await quote(world, park, after, local(20, 13))

    assert (old.quote.schedule_version, old.quote.gross_fee_fen) == (1, 1000)
    assert (new.quote.schedule_version, new.quote.gross_fee_fen) == (2, 800)
    versions = await world.admin.ListFeeSchedules(
        api.ListFeeSchedulesRequest(mall_id=park.mall_id, car_park_id=park.car_park_id)
    )
    assert [s.version for s in versions.schedules] == [2, 1]


async def test_ops_read_a_plates_history_from_the_command_line(
    world: World, unique_id: str, nats_url: str
) -> None:
    park = CarPark(f"mall-{unique_id}", "", "")
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    plate = plate_for(unique_id)
    await world.parking.BindPlate(bind(park, alice, plate))
    with pytest.raises(grpc.aio.AioRpcError):
        await world.parking.BindPlate(bind(park, bob, plate))

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parking",
        "plate-history",
        park.mall_id,
        plate.lower(),
        stdout=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "DATABASE_URL": world.database_url,
            "NATS_URL": nats_url,
            "LOG_LEVEL": "error",
            "POINTS_GRPC_TARGET": "",
        },
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)

    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [(x["member_id"], x["action"], x["holder_member_id"]) for x in lines] == [
        (alice, "bound", None),
        (bob, "refused", alice),
    ]
