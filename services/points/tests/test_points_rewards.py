"""A coupon bought with points confirms the hold that paid for it, even when the gateway never
got to (coupons.coupon.claimed carries the hold id); confirming again changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import structlog.testing
from eventbus.consumer import Delivery
from kit.migrations import migrate
from mall.coupons.v1 import coupons_pb2
from mall.coupons.v1 import events_pb2 as coupons_events
from mall_testing.plugin import FreshDatabase
from points.adapters import repository
from points.bootstrap import MIGRATIONS
from points.domain.model import AttributedPayment
from points.domain.redemption import HoldRequest
from points.entrypoints.reward_consumer import COUPON_CLAIMED, on_coupon_claimed
from points.service_layer.credits import credit_payments
from points.service_layer.redemptions import confirm_hold, hold_points, release_hold


@pytest.fixture(scope="module")
async def points_db(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("points")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture
async def conn(points_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(points_db)
    try:
        yield connection
    finally:
        await connection.close()


async def member_with(conn: asyncpg.Connection, mall_id: str, points: int) -> str:
    member_id = str(uuid.uuid4())
    paid = AttributedPayment(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=member_id,
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        tenant_id="coffee-corner",
        amount_fen=points * 100,  # the default rule: a point per yuan
        paid_at=datetime.now(UTC),
        appid="wxappid",
        openid="o-shopper",
    )
    async with conn.transaction():
        await credit_payments(conn, [(paid, {})])
    return member_id


async def held(conn: asyncpg.Connection, mall_id: str, member_id: str, points: int) -> str:
    hold, _ = await hold_points(
        conn, HoldRequest(mall_id, member_id, points, "coupon", "stock-1", str(uuid.uuid4()))
    )
    return hold.hold_id


def claimed(mall_id: str, member_id: str, hold_id: str, channel: int) -> Delivery:
    event = coupons_events.CouponClaimed(
        mall_id=mall_id,
        member_id=member_id,
        coupon_id=str(uuid.uuid4()),
        stock_id="stock-1",
        channel=channel,  # type: ignore[arg-type]
        redemption_id=hold_id,
    )
    return Delivery(str(uuid.uuid4()), COUPON_CLAIMED, event.SerializeToString())


async def handle(conn: asyncpg.Connection, *deliveries: Delivery) -> None:
    async with conn.transaction():
        await on_coupon_claimed(conn, deliveries)


async def test_a_points_coupon_confirms_its_hold_once(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    member_id = await member_with(conn, mall_id, 500)
    hold_id = await held(conn, mall_id, member_id, 200)

    await handle(conn, claimed(mall_id, member_id, hold_id, coupons_pb2.CLAIM_CHANNEL_POINTS))
    after_event = await repository.get_account(conn, mall_id, member_id)
    redemption_id, _ = await confirm_hold(conn, mall_id, hold_id)  # the gateway, late
    await handle(conn, claimed(mall_id, member_id, hold_id, coupons_pb2.CLAIM_CHANNEL_POINTS))

    account = await repository.get_account(conn, mall_id, member_id)
    assert (after_event.balance, after_event.held) == (300, 0)
    assert (account.balance, account.held) == (300, 0)  # spent once
    redemptions = await conn.fetchval(
        "SELECT count(*) FROM ledger WHERE mall_id = $1 AND kind = 'redemption'", mall_id
    )
    assert redemptions == 1
    assert redemption_id


async def test_other_claims_and_a_released_hold_change_nothing(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    member_id = await member_with(conn, mall_id, 500)
    open_hold = await held(conn, mall_id, member_id, 100)
    given_back = await held(conn, mall_id, member_id, 50)
    await release_hold(conn, mall_id, given_back)

    with structlog.testing.capture_logs() as logs:
        await handle(
            conn,
            # a free claim naming a hold (it is not the hold's coupon) and an unknown hold
            claimed(mall_id, member_id, open_hold, coupons_pb2.CLAIM_CHANNEL_MINI_PROGRAM),
            claimed(mall_id, member_id, str(uuid.uuid4()), coupons_pb2.CLAIM_CHANNEL_POINTS),
            claimed(mall_id, member_id, given_back, coupons_pb2.CLAIM_CHANNEL_POINTS),
        )

    account = await repository.get_account(conn, mall_id, member_id)
    assert (account.balance, account.held) == (500, 100)  # the open hold is still only held
    refused = sorted(e["code"] for e in logs if e["event"] == "reward_hold_not_confirmed")
    assert refused == ["hold_not_found", "hold_not_held"]
