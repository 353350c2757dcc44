"""Parking-hour coupons used at a car park: coupons follows parking.session.settled.

End to end over real NATS JetStream and PostgreSQL with the real parking service: a parking
coupon claimed in coupons reaches parking (coupons.coupon.claimed), parking applies it to a stay
and names it in parking.session.settled, and coupons marks it USED at that car park — once, even
when the settled event is delivered again. Then the handler on its own: what is left alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import nats
import pytest
from coupons.adapters import stocks as stocks_sql
from coupons.bootstrap import MIGRATIONS, bootstrap
from coupons.config import Settings
from coupons.domain.claims import Channel, Claim
from coupons.domain.stocks import Kind, NewStock, Stock, Terms
from coupons.entrypoints.consumers import SESSION_SETTLED, on_session_settled
from coupons.service_layer.claims import claim_batch
from eventbus.consumer import Delivery
from google.protobuf.message import Message
from kit.cli import running, serving
from kit.credentials import hash_secret
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.migrations import migrate
from kit.proto import timestamp
from mall.coupons.v1 import events_pb2 as coupon_events
from mall.member.v1 import directory_pb2
from mall.member.v1 import events_pb2 as member_events
from mall.parking.v1 import events_pb2 as parking_events
from mall.parking.v1 import parking_pb2 as ppb
from mall.parking.v1 import parking_service_pb2 as papi
from mall.parking.v1 import parking_service_pb2_grpc as pstubs
from mall_testing.plugin import FreshDatabase
from nats.js.client import JetStreamContext
from parking.bootstrap import MIGRATIONS as PARKING_MIGRATIONS
from parking.bootstrap import bootstrap as parking_bootstrap
from parking.config import Settings as ParkingSettings

NOW = datetime.now(UTC)
SH = ZoneInfo("Asia/Shanghai")
T = TypeVar("T")


@pytest.fixture(scope="module")
async def url(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture
async def db(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def parking_stock(db: asyncpg.Connection, mall_id: str, minutes: int = 60) -> Stock:
    stock, _ = await stocks_sql.create(
        db,
        NewStock(
            mall_id=mall_id,
            tenant_id="",
            terms=Terms(kind=Kind.PARKING, title=f"停车券 {minutes} 分钟", parking_minutes=minutes),
            max_coupons=100,
            claim_starts_at=NOW - timedelta(hours=1),
            claim_ends_at=NOW + timedelta(days=1),
            request_id=str(uuid.uuid4()),
            valid_days=30,
        ),
    )
    return stock


async def give(db: asyncpg.Connection, stock: Stock, member_id: str) -> str:
    (result,) = await claim_batch(
        db,
        [Claim(stock.mall_id, stock.stock_id, member_id, str(uuid.uuid4()), channel=Channel.OPS)],
    )
    assert result.coupon is not None, result
    return result.coupon.coupon_id


async def status_of(db: asyncpg.Connection, mall_id: str, coupon_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        """SELECT status, redeemed_car_park_id, use_request_id, discount_fen, order_amount_fen
             FROM coupons WHERE mall_id = $1 AND coupon_id = $2""",
        mall_id,
        coupon_id,
    )
    assert row is not None
    return row


async def redeemed_events(
    db: asyncpg.Connection, mall_id: str
) -> list[coupon_events.CouponRedeemed]:
    rows = await db.fetch(
        """SELECT payload FROM outbox WHERE mall_id = $1 AND subject = 'coupons.coupon.redeemed'
            ORDER BY created_at""",
        mall_id,
    )
    return [coupon_events.CouponRedeemed.FromString(r["payload"]) for r in rows]


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    for _ in range(300):
        value = await probe()
        if done(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened; last value {value!r}")


# -- end to end, with the real parking service ---------------------------------------------


@dataclass
class Park:
    mall_id: str
    car_park_id: str
    credential: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-mall-credential", self.credential),)


async def publish(js: JetStreamContext, subject: str, message: Message) -> None:
    await js.publish(
        subject, message.SerializeToString(), headers={"Nats-Msg-Id": str(uuid.uuid4())}
    )


async def open_car_park(
    js: JetStreamContext,
    gates: pstubs.CarParkServiceAsyncStub,
    admin: pstubs.ParkingAdminServiceAsyncStub,
    unique_id: str,
) -> Park:
    """A car park as member announces it, its gate credential, and 5 yuan per started hour."""
    mall_id, car_park_id = f"mall-{unique_id}", f"park-{unique_id}"
    secret, credential_id = uuid.uuid4().hex, f"cred-{unique_id}"
    await publish(
        js,
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
    bucket = await open_bucket(js, DIRECTORY_BUCKET)
    await bucket.put(f"credential.{mall_id}.{credential_id}", credential.SerializeToString())
    await admin.PutFeeSchedule(
        papi.PutFeeScheduleRequest(
            schedule=ppb.FeeSchedule(
                mall_id=mall_id,
                car_park_id=car_park_id,
                effective_from=timestamp(datetime(2020, 1, 1, tzinfo=UTC)),
                free_minutes=15,
                unit_minutes=60,
                unit_fee_fen=500,
                daily_cap_fen=3000,
            )
        )
    )
    park = Park(mall_id, car_park_id, f"{credential_id}.{secret}")

    async def ready() -> bool:
        try:
            await gates.SettleExit(
                papi.SettleExitRequest(
                    mall_id=mall_id,
                    car_park_id=car_park_id,
                    session_id=str(uuid.uuid4()),
                    quote_id=str(uuid.uuid4()),
                    payment_method=ppb.PAYMENT_METHOD_CASH,
                ),
                metadata=park.metadata,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE):
                return False  # the directory copy is loading, or has not got it yet
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        return True

    await eventually(ready, bool)
    return park


async def redeemed_on_stream(
    js: JetStreamContext, mall_id: str, until_coupon_id: str
) -> list[coupon_events.CouponRedeemed]:
    """The mall's coupons.coupon.redeemed events on the COUPONS stream, up to and including the
    one for ``until_coupon_id`` (the relay publishes in the order the outbox was written)."""
    seen: list[coupon_events.CouponRedeemed] = []
    sub = await js.subscribe("coupons.coupon.redeemed", ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            event = coupon_events.CouponRedeemed.FromString(msg.data)
            if event.mall_id == mall_id:
                seen.append(event)
                if event.coupon_id == until_coupon_id:
                    return seen
    finally:
        await sub.unsubscribe()


async def settled_event(js: JetStreamContext, session_id: str) -> bytes:
    sub = await js.subscribe("parking.session.settled", ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            if parking_events.SessionSettled.FromString(msg.data).session_id == session_id:
                return bytes(msg.data)
    finally:
        await sub.unsubscribe()


async def test_a_parking_coupon_used_by_a_stay_is_redeemed_once_at_its_car_park(
    url: str,
    db: asyncpg.Connection,
    fresh_database: FreshDatabase,
    nats_url: str,
    unique_id: str,
) -> None:
    parking_url = await fresh_database("parking")
    await migrate(parking_url, PARKING_MIGRATIONS)
    coupons_settings = Settings(
        database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning"
    )
    parking_settings = ParkingSettings(
        database_url=parking_url,
        nats_url=nats_url,
        grpc_port=0,
        log_level="warning",
        points_grpc_target="",
    )
    member_id = str(uuid.uuid4())
    plate = f"粤B{int(unique_id, 16) % 100_000:05d}"
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        async with (
            bootstrap(coupons_settings) as coupons_roles,
            running(coupons_roles, ("consume", "relay")),
            parking_bootstrap(parking_settings) as parking_roles,
            serving(parking_roles, ("serve", "consume", "relay")) as target,
            grpc.aio.insecure_channel(target) as channel,
        ):
            gates = pstubs.CarParkServiceStub(channel)
            park = await open_car_park(
                js, gates, pstubs.ParkingAdminServiceStub(channel), unique_id
            )
            await pstubs.ParkingServiceStub(channel).BindPlate(
                papi.BindPlateRequest(
                    mall_id=park.mall_id,
                    member_id=member_id,
                    plate_number=plate,
                    plate_color=ppb.PLATE_COLOR_BLUE,
                )
            )
            coupon_id = await give(db, await parking_stock(db, park.mall_id), member_id)
            # the stay ends a little after the claim: the coupon is valid from its claim on
            entered = datetime.now(SH).replace(microsecond=0) - timedelta(minutes=95)
            await gates.RecordEntry(
                papi.RecordEntryRequest(
                    mall_id=park.mall_id,
                    car_park_id=park.car_park_id,
                    plate_number=plate,
                    plate_color=ppb.PLATE_COLOR_BLUE,
                    entered_at=timestamp(entered),
                    entry_ref=uuid.uuid4().hex,
                    gate_id="in-1",
                ),
                metadata=park.metadata,
            )
            exit_at = entered + timedelta(minutes=100)  # 2 started hours: 10 yuan

            async def quote() -> papi.QuoteExitResponse:
                return await gates.QuoteExit(
                    papi.QuoteExitRequest(
                        mall_id=park.mall_id,
                        car_park_id=park.car_park_id,
                        plate_number=plate,
                        exit_at=timestamp(exit_at),
                        gate_id="out-1",
                    ),
                    metadata=park.metadata,
                )

            # coupons' relay published the claim; parking's consumer learnt the coupon.
            quoted = await eventually(
                quote, lambda r: [b.coupon_id for b in r.quote.benefits] == [coupon_id]
            )
            settled = await gates.SettleExit(
                papi.SettleExitRequest(
                    mall_id=park.mall_id,
                    car_park_id=park.car_park_id,
                    session_id=quoted.session.session_id,
                    quote_id=quoted.quote.quote_id,
                    paid_fen=quoted.quote.payable_fen,
                    exited_at=quoted.quote.quoted_at,
                    payment_method=ppb.PAYMENT_METHOD_CASH,
                ),
                metadata=park.metadata,
            )
            used = await eventually(
                lambda: status_of(db, park.mall_id, coupon_id), lambda r: r["status"] == "used"
            )
            # The settled event delivered again (JetStream redelivers under its own msg id),
            # then a marker: once the marker's coupon is used, the repeat was handled too.
            data = await settled_event(js, settled.session.session_id)
            await js.publish(
                SESSION_SETTLED, data, headers={"Nats-Msg-Id": f"again-{uuid.uuid4()}"}
            )
            marker = await give(db, await parking_stock(db, park.mall_id), member_id)
            await publish(
                js,
                SESSION_SETTLED,
                parking_events.SessionSettled(
                    event_id=str(uuid.uuid4()),
                    mall_id=park.mall_id,
                    session_id=str(uuid.uuid4()),
                    car_park_id=park.car_park_id,
                    member_id=member_id,
                    exited_at=timestamp(exit_at),
                    benefits=[
                        ppb.AppliedBenefit(
                            kind=ppb.BENEFIT_KIND_COUPON, coupon_id=marker, discount_fen=500
                        )
                    ],
                ),
            )
            await eventually(
                lambda: status_of(db, park.mall_id, marker), lambda r: r["status"] == "used"
            )
            published = await redeemed_on_stream(js, park.mall_id, marker)
    finally:
        await nc.close()

    benefit = quoted.quote.benefits[0]
    assert benefit.discount_fen == 500
    assert used["redeemed_car_park_id"] == park.car_park_id
    assert used["use_request_id"] == f"parking:{settled.session.session_id}"
    assert (used["discount_fen"], used["order_amount_fen"]) == (500, 1000)
    # Published once, though the stay was settled before the repeat and the marker came after.
    assert [e.coupon_id for e in published] == [coupon_id, marker]
    event = published[0]
    assert (event.car_park_id, event.session_id) == (park.car_park_id, settled.session.session_id)
    assert (event.member_id, event.store_id, event.discount_fen) == (member_id, "", 500)


# -- the handler on its own: what it leaves alone -------------------------------------------


def settled(
    mall_id: str, member_id: str, *coupon_ids: str, session_id: str | None = None
) -> Delivery:
    msg = parking_events.SessionSettled(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        session_id=session_id or str(uuid.uuid4()),
        car_park_id="park-1",
        member_id=member_id,
        exited_at=timestamp(NOW),
        gross_fee_fen=3000,
        benefits=[
            ppb.AppliedBenefit(kind=ppb.BENEFIT_KIND_TIER, free_minutes=60, discount_fen=500),
            *(
                ppb.AppliedBenefit(kind=ppb.BENEFIT_KIND_COUPON, coupon_id=c, discount_fen=500)
                for c in coupon_ids
            ),
        ],
    )
    return Delivery(event_id=msg.event_id, subject=SESSION_SETTLED, data=msg.SerializeToString())


async def handle(db: asyncpg.Connection, *deliveries: Delivery) -> None:
    async with db.transaction():  # as the batched consumer does
        await on_session_settled(db, list(deliveries))


async def test_used_revoked_expired_and_other_coupons_are_left_alone(
    db: asyncpg.Connection, unique_id: str
) -> None:
    mall_id, member_id = f"mall-{unique_id}", str(uuid.uuid4())
    stock = await parking_stock(db, mall_id)
    good, revoked, expired, elsewhere = [await give(db, stock, member_id) for _ in range(4)]
    await db.execute(
        "UPDATE coupons SET status = 'revoked' WHERE mall_id = $1 AND coupon_id = $2",
        mall_id,
        revoked,
    )
    await db.execute(
        "UPDATE coupons SET status = 'expired' WHERE mall_id = $1 AND coupon_id = $2",
        mall_id,
        expired,
    )
    shop_stock, _ = await stocks_sql.create(
        db,
        NewStock(
            mall_id=mall_id,
            tenant_id="coffee",
            terms=Terms(kind=Kind.FIXED_AMOUNT, title="满50减10", discount_fen=1000),
            max_coupons=10,
            claim_starts_at=NOW - timedelta(hours=1),
            claim_ends_at=NOW + timedelta(days=1),
            request_id=str(uuid.uuid4()),
            valid_days=3,
        ),
    )
    shop = await give(db, shop_stock, member_id)
    first = settled(mall_id, member_id, good, revoked, expired, shop, "no-such-coupon")

    await handle(db, first)
    # The same stay seen again under another event id (outside the inbox), and another stay
    # naming a coupon the first already used.
    again = parking_events.SessionSettled.FromString(first.data)
    await handle(
        db,
        settled(mall_id, member_id, good, session_id=again.session_id),
        settled(mall_id, member_id, good, elsewhere),
    )

    states = {
        c: (await status_of(db, mall_id, c))["status"] for c in (good, revoked, expired, shop)
    }
    assert states == {good: "used", revoked: "revoked", expired: "expired", shop: "available"}
    assert (await status_of(db, mall_id, elsewhere))["status"] == "used"
    good_row = await status_of(db, mall_id, good)
    assert good_row["use_request_id"] == f"parking:{again.session_id}"
    assert [e.coupon_id for e in await redeemed_events(db, mall_id)] == [good, elsewhere]
