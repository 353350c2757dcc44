"""Tiers on real PostgreSQL: up on the payment that earns it (the attributed event carries
the new tier), down only at the review date, refunds never downgrade at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from kit.migrations import migrate
from mall.member.v1 import events_pb2
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS
from member.domain.model import Attribution, CapturedPayment, CapturedRefund
from member.domain.tiers import DEFAULT_TIERS, TierLadder, next_review, years_later
from member.entrypoints.ops import tier_commands
from member.service_layer import directory
from member.service_layer.payments import attribute_payments
from member.service_layer.refunds import attribute_refunds
from member.service_layer.tiers import review_tiers

TIER_CHANGED = "member.tier.changed"
BENEFITS_CHANGED = "member.benefits.changed"
ATTRIBUTED = "member.payment.attributed"
JOINED = "member.member.joined"
SILVER = 500_000
GOLD = 2_000_000


@pytest.fixture(scope="module")
async def member_db(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("member")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture
async def conn(member_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(member_db)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def mall(conn: asyncpg.Connection, unique_id: str) -> str:
    mall_id = f"mall-{unique_id}"
    async with conn.transaction():
        await directory.create_mall(
            conn,
            mall_id=mall_id,
            name="Mall",
            appid=f"wx{unique_id}",
            brand_id="brand",
            mchid="1900000109",
            time_zone="Asia/Shanghai",
        )
        await directory.create_tenant(
            conn, mall_id=mall_id, tenant_id="watches", name="Watches", category="luxury"
        )
        await directory.create_store(
            conn,
            mall_id=mall_id,
            tenant_id="watches",
            store_id="watches-l1",
            name="Watches L1",
            mchid="1900000109",
            sub_mchid="",
            shop_number=f"SHOP-{unique_id}",
        )
    return mall_id


def captured(mall_id: str, openid: str, amount_fen: int) -> CapturedPayment:
    tag = mall_id.removeprefix("mall-")
    return CapturedPayment(
        event_id=str(uuid.uuid4()),
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        appid=f"wx{tag}",
        mchid="1900000109",
        shop_number=f"SHOP-{tag}",
        openid=openid,
        amount_fen=amount_fen,
        paid_at=datetime.now(UTC),
    )


async def pay(conn: asyncpg.Connection, *payments: CapturedPayment) -> list[Attribution]:
    async with conn.transaction():
        return await attribute_payments(conn, [(p, {}) for p in payments])


async def events(conn: asyncpg.Connection, mall_id: str) -> list[tuple[str, bytes]]:
    rows = await conn.fetch(
        """SELECT subject, payload FROM outbox
            WHERE mall_id = $1 AND subject NOT LIKE 'member.directory.%' ORDER BY seq""",
        mall_id,
    )
    return [(r["subject"], r["payload"]) for r in rows]


async def tier_changes(conn: asyncpg.Connection, mall_id: str) -> list[events_pb2.TierChanged]:
    return [
        events_pb2.TierChanged.FromString(p)
        for s, p in await events(conn, mall_id)
        if s == TIER_CHANGED
    ]


async def benefit_notices(
    conn: asyncpg.Connection, mall_id: str
) -> list[events_pb2.BenefitsChanged]:
    return [
        events_pb2.BenefitsChanged.FromString(p)
        for s, p in await events(conn, mall_id)
        if s == BENEFITS_CHANGED
    ]


async def tier_of(conn: asyncpg.Connection, mall_id: str, member_id: str) -> tuple[str, Any]:
    row = await conn.fetchrow(
        "SELECT tier_code, tier_review_at FROM members WHERE mall_id = $1 AND member_id = $2",
        mall_id,
        uuid.UUID(member_id),
    )
    assert row is not None
    return row["tier_code"], row["tier_review_at"]


# -- domain ---------------------------------------------------------------------------------


def test_the_ladder_gives_the_highest_tier_the_spend_reaches() -> None:
    ladder = TierLadder(reversed(DEFAULT_TIERS))
    assert [ladder.earned(s).tier_code for s in (0, SILVER - 1, SILVER, GOLD)] == [
        "basic",
        "basic",
        "silver",
        "gold",
    ]
    assert ladder.upgrade("silver", SILVER) is None
    up = ladder.upgrade("basic", GOLD)
    assert up is not None
    assert up.tier_code == "gold"


def test_a_review_falls_a_year_on_even_from_a_leap_day() -> None:
    leap = datetime(2028, 2, 29, 12, tzinfo=UTC)
    assert next_review(leap) == datetime(2029, 2, 28, 12, tzinfo=UTC)
    assert years_later(datetime(2026, 5, 1, tzinfo=UTC), -1) == datetime(2025, 5, 1, tzinfo=UTC)


# -- upgrades ---------------------------------------------------------------------------------


async def test_the_payment_crossing_a_threshold_upgrades_at_once(
    conn: asyncpg.Connection, mall: str
) -> None:
    [first] = await pay(conn, captured(mall, "o-big", SILVER - 1))
    [second] = await pay(conn, captured(mall, "o-big", 1))

    assert first.member.tier_code == "basic"
    assert second.member.tier_code == "silver"
    subjects = [s for s, _ in await events(conn, mall)]
    assert subjects == [JOINED, ATTRIBUTED, TIER_CHANGED, BENEFITS_CHANGED, ATTRIBUTED]
    attributed = events_pb2.PaymentAttributed.FromString((await events(conn, mall))[-1][1])
    assert attributed.tier_code == "silver"  # the tier after this payment
    [change] = await tier_changes(conn, mall)
    assert (change.previous_tier_code, change.tier_code) == ("basic", "silver")
    assert change.reason == events_pb2.TIER_CHANGE_REASON_SPEND
    tier, review_at = await tier_of(conn, mall, second.member.member_id)
    assert tier == "silver"
    assert review_at - datetime.now(UTC) > timedelta(days=364)


async def test_one_batch_upgrades_on_the_payment_that_crosses(
    conn: asyncpg.Connection, mall: str
) -> None:
    done = await pay(
        conn,
        captured(mall, "o-batch", SILVER // 2),
        captured(mall, "o-batch", SILVER // 2),
        captured(mall, "o-batch", GOLD),
    )

    assert [a.member.tier_code for a in done] == ["basic", "silver", "gold"]
    changes = await tier_changes(conn, mall)
    assert [(c.previous_tier_code, c.tier_code) for c in changes] == [
        ("basic", "silver"),
        ("silver", "gold"),
    ]


async def test_a_large_first_payment_jumps_straight_to_gold(
    conn: asyncpg.Connection, mall: str
) -> None:
    [done] = await pay(conn, captured(mall, "o-rich", GOLD))

    assert done.member.tier_code == "gold"
    [change] = await tier_changes(conn, mall)
    assert (change.previous_tier_code, change.tier_code) == ("basic", "gold")


async def test_concurrent_payments_crossing_together_upgrade_once(
    member_db: str, conn: asyncpg.Connection, mall: str
) -> None:
    others = [await asyncpg.connect(member_db) for _ in range(3)]
    await pay(conn, captured(mall, "o-many", 1_000))  # the member exists; the race is on spend
    try:
        await asyncio.gather(*(pay(c, captured(mall, "o-many", SILVER // 3 + 1)) for c in others))
    finally:
        for c in others:
            await c.close()

    changes = await tier_changes(conn, mall)
    assert [(c.previous_tier_code, c.tier_code) for c in changes] == [("basic", "silver")]


# -- refunds and reviews --------------------------------------------------------------------


def refund_of(mall_id: str, a: Attribution) -> CapturedRefund:
    return CapturedRefund(
        event_id=str(uuid.uuid4()),
        refund_id=f"5030{uuid.uuid4().hex[:20]}",
        transaction_id=a.payment.transaction_id,
        appid=a.payment.appid,
        openid=a.payment.openid,
        refund_amount_fen=a.payment.amount_fen,
        refunded_at=datetime.now(UTC),
    )


async def review(conn: asyncpg.Connection, mall_id: str, now: datetime) -> list[Any]:
    async with conn.transaction():
        return await review_tiers(conn, mall_id, now)


async def test_a_refund_never_downgrades_until_the_review_date(
    conn: asyncpg.Connection, mall: str
) -> None:
    [paid] = await pay(conn, captured(mall, "o-undo", SILVER))
    member_id = paid.member.member_id
    async with conn.transaction():
        await attribute_refunds(conn, [(refund_of(mall, paid), {})])
    _, review_at = await tier_of(conn, mall, member_id)

    assert await review(conn, mall, datetime.now(UTC)) == []
    just_before = review_at - timedelta(seconds=1)
    assert await review(conn, mall, just_before) == []
    assert (await tier_of(conn, mall, member_id))[0] == "silver"

    changed = await review(conn, mall, review_at)
    again = await review(conn, mall, review_at)

    assert changed == [(member_id, "silver", "basic")]
    assert again == []
    assert await tier_of(conn, mall, member_id) == ("basic", None)
    changes = await tier_changes(conn, mall)
    assert [(c.tier_code, c.reason) for c in changes] == [
        ("silver", events_pb2.TIER_CHANGE_REASON_SPEND),
        ("basic", events_pb2.TIER_CHANGE_REASON_REVIEW),
    ]
    notices = await benefit_notices(conn, mall)
    assert [(n.previous_tier.tier_code, n.tier.tier_code) for n in notices] == [
        ("basic", "silver"),
        ("silver", "basic"),
    ]
    assert [(c.change, c.benefit.benefit_code) for c in notices[1].changes] == [
        (events_pb2.BENEFIT_CHANGE_LOST, "parking_free_2h")
    ]


async def test_a_review_keeps_a_tier_the_spend_still_earns(
    conn: asyncpg.Connection, mall: str
) -> None:
    [paid] = await pay(conn, captured(mall, "o-loyal", GOLD))
    member_id = paid.member.member_id
    _, review_at = await tier_of(conn, mall, member_id)
    # Within the rolling year before the review the member spent enough for silver.
    await conn.execute(
        "UPDATE payments SET paid_at = $3 WHERE mall_id = $1 AND member_id = $2",
        mall,
        uuid.UUID(member_id),
        review_at - timedelta(days=30),
    )
    await conn.execute(
        "UPDATE payments SET amount_fen = $3 WHERE mall_id = $1 AND member_id = $2",
        mall,
        uuid.UUID(member_id),
        SILVER,
    )

    changed = await review(conn, mall, review_at)

    assert changed == [(member_id, "gold", "silver")]
    tier, next_at = await tier_of(conn, mall, member_id)
    assert tier == "silver"
    assert next_at == next_review(review_at)


async def test_the_review_command_reviews_every_mall(
    member_db: str, conn: asyncpg.Connection, mall: str
) -> None:
    [paid] = await pay(conn, captured(mall, "o-cmd", SILVER))
    await conn.execute(
        """UPDATE members SET tier_review_at = now() - interval '1 day'
            WHERE mall_id = $1 AND member_id = $2""",
        mall,
        uuid.UUID(paid.member.member_id),
    )
    await conn.execute(
        "UPDATE payments SET paid_at = now() - interval '13 months' WHERE mall_id = $1", mall
    )
    pool = await asyncpg.create_pool(member_db, min_size=1, max_size=2)
    try:
        assert await tier_commands(pool)["review-tiers"]([mall]) == 0
    finally:
        await pool.close()

    assert (await tier_of(conn, mall, paid.member.member_id))[0] == "basic"
