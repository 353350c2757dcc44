"""Post-payment coupons (支付后有礼) and refunds on real PostgreSQL, through the batched
consumer handlers; and once end to end, member's events arriving over real NATS JetStream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import nats
import pytest
from coupons.adapters import stocks as stocks_sql
from coupons.bootstrap import MIGRATIONS, bootstrap
from coupons.config import Settings
from coupons.domain.claims import Claim
from coupons.domain.post_payment import Rule
from coupons.domain.redemption import Use
from coupons.domain.stocks import Kind, NewStock, Stock, Terms
from coupons.entrypoints.consumers import on_payment_attributed, on_refund_attributed
from coupons.service_layer.claims import claim_batch
from coupons.service_layer.offers import put_rule
from coupons.service_layer.redemptions import redeem
from eventbus.consumer import Delivery
from kit.cli import running
from kit.migrations import migrate
from kit.proto import timestamp
from mall.coupons.v1 import events_pb2 as coupon_events
from mall.member.v1 import events_pb2 as member_events
from mall_testing.plugin import FreshDatabase

NOW = datetime.now(UTC)


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


async def make_stock(db: asyncpg.Connection, mall_id: str, tenant_id: str, **more: int) -> Stock:
    stock, _ = await stocks_sql.create(
        db,
        NewStock(
            mall_id=mall_id,
            tenant_id=tenant_id,
            terms=Terms(kind=Kind.FIXED_AMOUNT, title="复购券 满50减10", discount_fen=1000),
            max_coupons=more.get("max_coupons", 100),
            claim_starts_at=NOW - timedelta(hours=1),
            claim_ends_at=NOW + timedelta(days=1),
            request_id=str(uuid.uuid4()),
            valid_days=14,
        ),
    )
    return stock


async def make_rule(
    db: asyncpg.Connection, stock: Stock, min_fen: int, tenants: tuple[str, ...] = ()
) -> Rule:
    return await put_rule(
        db,
        Rule(
            mall_id=stock.mall_id,
            rule_id=f"rule-{uuid.uuid4().hex[:8]}",
            stock_id=stock.stock_id,
            owner_tenant="",
            min_amount_fen=min_fen,
            tenant_ids=tenants,
            starts_at=NOW - timedelta(hours=1),
            ends_at=None,
            enabled=True,
        ),
        (stock.mall_id, stock.tenant_id),
    )


def payment(
    mall_id: str, member_id: str, tenant_id: str, amount: int, tx: str | None = None
) -> member_events.PaymentAttributed:
    return member_events.PaymentAttributed(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=member_id,
        tenant_id=tenant_id,
        store_id=f"{tenant_id}-1",
        amount_fen=amount,
        transaction_id=tx or f"4200{uuid.uuid4().int % 10**20:020d}",
        paid_at=timestamp(datetime.now(UTC)),
    )


def refund(p: member_events.PaymentAttributed, amount: int) -> member_events.RefundAttributed:
    return member_events.RefundAttributed(
        event_id=str(uuid.uuid4()),
        mall_id=p.mall_id,
        member_id=p.member_id,
        tenant_id=p.tenant_id,
        transaction_id=p.transaction_id,
        refund_id=f"5030{uuid.uuid4().int % 10**20:020d}",
        refund_amount_fen=amount,
        pay_amount_fen=p.amount_fen,
    )


def delivery(
    subject: str, msg: member_events.PaymentAttributed | member_events.RefundAttributed
) -> Delivery:
    return Delivery(event_id=msg.event_id, subject=subject, data=msg.SerializeToString())


async def deliver(db: asyncpg.Connection, *msgs: object) -> None:
    """As the consumer does: one transaction for the batch."""
    async with db.transaction():
        payments = [m for m in msgs if isinstance(m, member_events.PaymentAttributed)]
        refunds = [m for m in msgs if isinstance(m, member_events.RefundAttributed)]
        if payments:
            await on_payment_attributed(
                db, [delivery("member.payment.attributed", p) for p in payments]
            )
        if refunds:
            await on_refund_attributed(
                db, [delivery("member.refund.attributed", r) for r in refunds]
            )


async def coupons_of(db: asyncpg.Connection, mall_id: str, member_id: str) -> list[tuple[str, str]]:
    rows = await db.fetch(
        """SELECT channel, status FROM coupons WHERE mall_id = $1 AND member_id = $2::uuid
            ORDER BY claimed_at""",
        mall_id,
        member_id,
    )
    return [(r["channel"], r["status"]) for r in rows]


async def test_a_qualifying_payment_issues_once_even_when_delivered_twice(
    db: asyncpg.Connection, unique_id: str
) -> None:
    mall_id, member_id = f"mall-{unique_id}", str(uuid.uuid4())
    own = await make_stock(db, mall_id, "coffee")
    partner = await make_stock(db, mall_id, "bakery")
    await make_rule(db, own, 5000)  # same brand, payments of 50 yuan or more
    await make_rule(db, partner, 8000, tenants=("coffee",))  # partner brand's coupon
    small = payment(mall_id, member_id, "coffee", 4999)
    big = payment(mall_id, member_id, "coffee", 9000)
    elsewhere = payment(mall_id, member_id, "tea", 90000)

    await deliver(db, small, big, elsewhere)
    await deliver(db, big)  # a redelivery (the inbox would drop it; the request id also does)

    rows = await db.fetch(
        """SELECT stock_id, transaction_id, channel FROM coupons
            WHERE mall_id = $1 ORDER BY stock_id""",
        mall_id,
    )
    assert sorted((r["stock_id"], r["transaction_id"]) for r in rows) == sorted(
        [(own.stock_id, big.transaction_id), (partner.stock_id, big.transaction_id)]
    )
    assert {r["channel"] for r in rows} == {"post_payment"}
    claimed = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE mall_id = $1 AND subject = 'coupons.coupon.claimed'",
        mall_id,
    )
    assert claimed == 2


async def test_refund_revokes_unused_post_payment_coupons_and_returns_a_used_one(
    db: asyncpg.Connection, unique_id: str
) -> None:
    mall_id, member_id = f"mall-{unique_id}", str(uuid.uuid4())
    reward = await make_stock(db, mall_id, "coffee")
    await make_rule(db, reward, 5000)
    shelf = await make_stock(db, mall_id, "coffee")
    (held,) = await claim_batch(
        db, [Claim(mall_id, shelf.stock_id, member_id, request_id="wallet-1")]
    )
    assert held.coupon is not None
    first = payment(mall_id, member_id, "coffee", 6000)
    await deliver(db, first)
    # The shopper uses the shelf coupon on a second order, paid by transaction `second`.
    second = payment(mall_id, member_id, "coffee", 3000)
    await redeem(
        db,
        Use(mall_id, held.coupon.coupon_id, "coffee-1", "coffee", "pos-1", 3000,
            transaction_id=second.transaction_id),
    )  # fmt: skip

    await deliver(db, refund(first, 1000))  # a partial refund of the first payment
    partial = await coupons_of(db, mall_id, member_id)
    await deliver(db, refund(second, 1000), refund(second, 2000))  # second refunded in full

    assert partial == [("mini_program", "used"), ("post_payment", "revoked")]
    assert await coupons_of(db, mall_id, member_id) == [
        ("mini_program", "available"),
        ("post_payment", "revoked"),
    ]
    subjects = await db.fetch(
        """SELECT subject, count(*) AS n FROM outbox WHERE mall_id = $1
            AND subject IN ('coupons.coupon.revoked', 'coupons.coupon.returned')
            GROUP BY subject ORDER BY subject""",
        mall_id,
    )
    assert [(r["subject"], r["n"]) for r in subjects] == [
        ("coupons.coupon.returned", 1),
        ("coupons.coupon.revoked", 1),
    ]


async def test_a_refund_before_its_payment_means_no_coupon(
    db: asyncpg.Connection, unique_id: str
) -> None:
    mall_id, member_id = f"mall-{unique_id}", str(uuid.uuid4())
    reward = await make_stock(db, mall_id, "coffee")
    await make_rule(db, reward, 100)
    p = payment(mall_id, member_id, "coffee", 6000)
    await deliver(db, refund(p, 6000))
    await deliver(db, p)
    assert await coupons_of(db, mall_id, member_id) == []


async def eventually(db: asyncpg.Connection, mall_id: str, member_id: str, want: object) -> None:
    for _ in range(400):
        if await coupons_of(db, mall_id, member_id) == want:
            return
        await asyncio.sleep(0.05)
    assert await coupons_of(db, mall_id, member_id) == want


async def test_member_events_over_jetstream_issue_then_revoke(
    url: str, db: asyncpg.Connection, nats_url: str, unique_id: str
) -> None:
    mall_id, member_id = f"mall-{unique_id}", str(uuid.uuid4())
    reward = await make_stock(db, mall_id, "coffee")
    await make_rule(db, reward, 5000)
    p = payment(mall_id, member_id, "coffee", 8800)
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    nc = await nats.connect(nats_url)
    try:
        async with bootstrap(settings) as roles, running(roles, ("consume",)):
            js = nc.jetstream()
            await js.publish(
                "member.payment.attributed",
                p.SerializeToString(),
                headers={"Nats-Msg-Id": p.event_id},
            )
            await eventually(db, mall_id, member_id, [("post_payment", "available")])
            r = refund(p, 8800)
            await js.publish(
                "member.refund.attributed",
                r.SerializeToString(),
                headers={"Nats-Msg-Id": r.event_id},
            )
            await eventually(db, mall_id, member_id, [("post_payment", "revoked")])
    finally:
        await nc.close()


async def test_partial_refunds_below_a_used_coupons_threshold_give_it_back_once(
    db: asyncpg.Connection, unique_id: str
) -> None:
    mall_id, member_id = f"mall-{unique_id}", str(uuid.uuid4())
    with_threshold, _ = await stocks_sql.create(
        db,
        NewStock(
            mall_id=mall_id,
            tenant_id="coffee",
            terms=Terms(
                kind=Kind.FIXED_AMOUNT, title="满100减10", discount_fen=1000, threshold_fen=10000
            ),
            max_coupons=10,
            claim_starts_at=NOW - timedelta(hours=1),
            claim_ends_at=NOW + timedelta(days=1),
            request_id=str(uuid.uuid4()),
            valid_days=14,
        ),
    )
    no_threshold = await make_stock(db, mall_id, "coffee")
    (big,) = await claim_batch(db, [Claim(mall_id, with_threshold.stock_id, member_id, "a")])
    (plain,) = await claim_batch(db, [Claim(mall_id, no_threshold.stock_id, member_id, "b")])
    assert big.coupon is not None
    assert plain.coupon is not None
    order = payment(mall_id, member_id, "coffee", 11000)  # a 120-yuan order, 10 off
    other = payment(mall_id, member_id, "coffee", 5000)
    for coupon, pay, amount in ((big.coupon, order, 12000), (plain.coupon, other, 6000)):
        await redeem(
            db,
            Use(mall_id, coupon.coupon_id, "coffee-1", "coffee", f"pos-{coupon.coupon_id}",
                amount, transaction_id=pay.transaction_id),
        )  # fmt: skip

    await deliver(db, refund(order, 1500), refund(other, 4000))  # 105 yuan left: still met
    kept = await coupons_of(db, mall_id, member_id)
    await deliver(db, refund(order, 600))  # 99 yuan left: below 100
    back = await coupons_of(db, mall_id, member_id)
    await deliver(db, refund(order, 100))  # further refunds give nothing more

    assert kept == [("mini_program", "used"), ("mini_program", "used")]
    assert back == [("mini_program", "available"), ("mini_program", "used")]
    assert await coupons_of(db, mall_id, member_id) == back
    returned = await db.fetch(
        "SELECT payload FROM outbox WHERE mall_id = $1 AND subject = 'coupons.coupon.returned'",
        mall_id,
    )
    assert len(returned) == 1
    event = coupon_events.CouponReturned.FromString(returned[0]["payload"])
    assert (event.coupon_id, event.transaction_id) == (big.coupon.coupon_id, order.transaction_id)
