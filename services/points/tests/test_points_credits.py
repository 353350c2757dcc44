"""Service layer on real PostgreSQL: points are credited once, and the ledger adds up."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from kit.errors import Unavailable
from kit.migrations import migrate
from mall.points.v1 import events_pb2
from mall_testing.plugin import FreshDatabase
from points.bootstrap import MIGRATIONS
from points.domain.model import AttributedPayment, AttributedRefund, Credit
from points.service_layer.credits import credit_payments
from points.service_layer.reversals import reverse_refunds

CREDITED = "points.points.credited"


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


@pytest.fixture
def mall_id(unique_id: str) -> str:
    return f"mall-{unique_id}"


def payment(
    mall_id: str, member_id: str, amount_fen: int, transaction_id: str | None = None
) -> AttributedPayment:
    return AttributedPayment(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=member_id,
        transaction_id=transaction_id or f"4200{uuid.uuid4().hex[:20]}",
        tenant_id="coffee-corner",
        amount_fen=amount_fen,
        paid_at=datetime(2025, 11, 26, 6, 30, tzinfo=UTC),
        appid="wxappid",
        openid="o-shopper",
    )


async def credit(
    conn: asyncpg.Connection, *payments: AttributedPayment, headers: dict[str, str] | None = None
) -> list[Credit]:
    async with conn.transaction():
        return await credit_payments(conn, [(p, headers or {}) for p in payments])


async def balance(conn: asyncpg.Connection, mall_id: str, member_id: str) -> int | None:
    value: int | None = await conn.fetchval(
        "SELECT balance FROM accounts WHERE mall_id = $1 AND member_id = $2",
        mall_id,
        uuid.UUID(member_id),
    )
    return value


async def ledger_rows(conn: asyncpg.Connection, mall_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT member_id, kind, points, balance_after, transaction_id FROM ledger
            WHERE mall_id = $1 ORDER BY entry_id""",
        mall_id,
    )


async def credited_events(
    conn: asyncpg.Connection, mall_id: str
) -> list[events_pb2.PointsCredited]:
    rows = await conn.fetch(
        "SELECT subject, payload FROM outbox WHERE mall_id = $1 ORDER BY seq", mall_id
    )
    return [
        events_pb2.PointsCredited.FromString(r["payload"]) for r in rows if r["subject"] == CREDITED
    ]


def new_member() -> str:
    return str(uuid.uuid4())


# -- crediting ------------------------------------------------------------------------------


async def test_a_payment_credits_its_points(conn: asyncpg.Connection, mall_id: str) -> None:
    member = new_member()
    p = payment(mall_id, member, 12_345)

    [done] = await credit(conn, p, headers={"x-correlation-id": "corr-1"})

    assert (done.points, done.balance_after, done.applied) == (123, 123, True)
    assert done.rule_version == "base-1"
    [row] = await ledger_rows(conn, mall_id)
    assert (str(row["member_id"]), row["kind"], row["points"]) == (member, "credit", 123)
    assert (row["balance_after"], row["transaction_id"]) == (123, p.transaction_id)
    account = await conn.fetchrow(
        "SELECT balance, lifetime_earned FROM accounts WHERE mall_id = $1", mall_id
    )
    assert account is not None
    assert (account["balance"], account["lifetime_earned"]) == (123, 123)
    [event] = await credited_events(conn, mall_id)
    assert (event.mall_id, event.member_id, event.transaction_id) == (
        mall_id,
        member,
        p.transaction_id,
    )
    assert (event.points, event.balance_after, event.amount_fen) == (123, 123, 12_345)
    assert (event.appid, event.openid, event.tenant_id) == ("wxappid", "o-shopper", "coffee-corner")
    assert event.rule_version == "base-1"
    headers = await conn.fetchval(
        "SELECT headers->>'x-correlation-id' FROM outbox WHERE mall_id = $1", mall_id
    )
    assert headers == "corr-1"


async def test_a_payment_is_credited_once_even_when_delivered_twice(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = new_member()
    p = payment(mall_id, member, 5_000)
    await credit(conn, p)

    [again] = await credit(conn, payment(mall_id, member, 5_000, p.transaction_id))

    assert (again.applied, again.points, again.balance_after) == (False, 0, 50)
    assert len(await ledger_rows(conn, mall_id)) == 1
    assert await balance(conn, mall_id, member) == 50
    assert len(await credited_events(conn, mall_id)) == 1


async def test_a_payment_repeated_within_one_batch_is_credited_once(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = new_member()
    p = payment(mall_id, member, 5_000)

    done = await credit(conn, p, p)

    assert [c.applied for c in done] == [True, False]
    assert await balance(conn, mall_id, member) == 50
    assert len(await credited_events(conn, mall_id)) == 1


async def test_balances_add_up_across_payments(conn: asyncpg.Connection, mall_id: str) -> None:
    member = new_member()

    await credit(conn, payment(mall_id, member, 12_345), payment(mall_id, member, 1_050))
    [last] = await credit(conn, payment(mall_id, member, 20_099))

    assert last.balance_after == 123 + 10 + 200
    assert await balance(conn, mall_id, member) == 333
    assert [r["balance_after"] for r in await ledger_rows(conn, mall_id)] == [123, 133, 333]
    assert [e.balance_after for e in await credited_events(conn, mall_id)] == [123, 133, 333]


async def test_a_payment_under_one_yuan_reports_zero_points_with_a_zero_entry(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = new_member()
    await credit(conn, payment(mall_id, member, 1_000))
    small = payment(mall_id, member, 50)

    [done] = await credit(conn, small)

    assert (done.points, done.balance_after, done.applied) == (0, 10, True)
    rows = await ledger_rows(conn, mall_id)
    assert [(r["transaction_id"], r["points"]) for r in rows][-1] == (small.transaction_id, 0)
    assert len(rows) == 2
    assert await balance(conn, mall_id, member) == 10
    zero = (await credited_events(conn, mall_id))[-1]
    assert (zero.transaction_id, zero.points, zero.balance_after) == (small.transaction_id, 0, 10)
    assert zero.amount_fen == 50


async def test_accounts_are_kept_per_mall(conn: asyncpg.Connection, unique_id: str) -> None:
    member = new_member()
    here, there = f"mall-{unique_id}", f"mall-{unique_id}-b"

    await credit(conn, payment(here, member, 10_000), payment(there, member, 30_000))

    assert await balance(conn, here, member) == 100
    assert await balance(conn, there, member) == 300


# -- the ledger -----------------------------------------------------------------------------


async def test_the_ledger_refuses_updates(conn: asyncpg.Connection, mall_id: str) -> None:
    await credit(conn, payment(mall_id, new_member(), 10_000))

    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute("UPDATE ledger SET points = points * 10 WHERE mall_id = $1", mall_id)

    assert [r["points"] for r in await ledger_rows(conn, mall_id)] == [100]


async def test_the_ledger_refuses_deletes(conn: asyncpg.Connection, mall_id: str) -> None:
    await credit(conn, payment(mall_id, new_member(), 10_000))

    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute("DELETE FROM ledger WHERE mall_id = $1", mall_id)

    assert len(await ledger_rows(conn, mall_id)) == 1


async def test_the_ledger_reconciles_with_balances_after_random_payments(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    """sum(ledger) = balance = lifetime_earned per member, with replays and sub-yuan amounts."""
    rng = random.Random(20251126)
    members = [new_member() for _ in range(5)]
    sent: list[AttributedPayment] = []
    for _ in range(12):
        batch = []
        for _ in range(rng.randint(1, 8)):
            if sent and rng.random() < 0.2:  # a redelivery of an earlier payment
                old = rng.choice(sent)
                batch.append(payment(mall_id, old.member_id, old.amount_fen, old.transaction_id))
            else:
                amount = rng.choice([rng.randint(1, 99), rng.randint(100, 2_000_000)])
                batch.append(payment(mall_id, rng.choice(members), amount))
        await credit(conn, *batch)
        sent.extend(batch)

    expected: dict[str, int] = dict.fromkeys(members, 0)
    for p in {p.transaction_id: p for p in sent}.values():
        expected[p.member_id] += p.amount_fen // 100
    mismatches = await conn.fetch(
        """SELECT a.member_id, a.balance, a.lifetime_earned, coalesce(l.total, 0) AS total
             FROM accounts a
             LEFT JOIN (SELECT member_id, sum(points) AS total FROM ledger
                         WHERE mall_id = $1 GROUP BY member_id) l USING (member_id)
            WHERE a.mall_id = $1
              AND (a.balance <> coalesce(l.total, 0) OR a.lifetime_earned <> a.balance)""",
        mall_id,
    )
    assert mismatches == []
    balances = await conn.fetch(
        "SELECT member_id, balance FROM accounts WHERE mall_id = $1", mall_id
    )
    assert {str(r["member_id"]): r["balance"] for r in balances} == {
        m: total for m, total in expected.items() if any(p.member_id == m for p in sent)
    }
    # Each member's running balance is the running sum of their entries.
    for member in members:
        rows = [r for r in await ledger_rows(conn, mall_id) if str(r["member_id"]) == member]
        running = 0
        for row in rows:
            running += row["points"]
            assert row["balance_after"] == running
    earning = {p.transaction_id for p in sent}
    credited = await conn.fetch(
        "SELECT transaction_id FROM ledger WHERE mall_id = $1 AND kind = 'credit'", mall_id
    )
    assert sorted(r["transaction_id"] for r in credited) == sorted(earning)
    reported = Counter(e.transaction_id for e in await credited_events(conn, mall_id))
    assert set(reported) == {p.transaction_id for p in sent}
    # Every payment, 0-point ones included, is reported once however often it was delivered.
    assert {t: reported[t] for t in earning} == dict.fromkeys(earning, 1)


async def test_concurrent_credits_to_one_account_lose_nothing(
    points_db: str, conn: asyncpg.Connection, mall_id: str
) -> None:
    member = new_member()
    payments = [payment(mall_id, member, 100 * (i + 1)) for i in range(6)]
    connections = [await asyncpg.connect(points_db) for _ in payments]
    try:
        await asyncio.gather(*(credit(c, p) for c, p in zip(connections, payments, strict=True)))
    finally:
        for c in connections:
            await c.close()

    assert await balance(conn, mall_id, member) == sum(range(1, 7))
    rows = await ledger_rows(conn, mall_id)
    assert sorted(r["points"] for r in rows) == [1, 2, 3, 4, 5, 6]
    # The account lock serialises the credits: each entry builds on the one before it.
    running = 0
    for row in rows:
        running += row["points"]
        assert row["balance_after"] == running


async def test_concurrent_deliveries_of_one_payment_credit_it_once(
    points_db: str, conn: asyncpg.Connection, mall_id: str
) -> None:
    p = payment(mall_id, new_member(), 7_700)
    connections = [await asyncpg.connect(points_db) for _ in range(4)]
    try:
        results = await asyncio.gather(*(credit(c, p) for c in connections))
    finally:
        for c in connections:
            await c.close()

    assert sorted(c.applied for [c] in results) == [False, False, False, True]
    assert await balance(conn, mall_id, p.member_id) == 77
    assert len(await ledger_rows(conn, mall_id)) == 1
    assert len(await credited_events(conn, mall_id)) == 1


# -- refunds: reversed in proportion, exactly once, reported to the platform ----------------


def refund_of(p: AttributedPayment, amount_fen: int, refund_id: str = "") -> AttributedRefund:
    return AttributedRefund(
        event_id=str(uuid.uuid4()),
        mall_id=p.mall_id,
        member_id=p.member_id,
        transaction_id=p.transaction_id,
        refund_id=refund_id or f"5030{uuid.uuid4().hex[:20]}",
        refund_amount_fen=amount_fen,
        pay_amount_fen=p.amount_fen,
        appid=p.appid,
        openid=p.openid,
    )


async def reverse(conn: asyncpg.Connection, *refunds: AttributedRefund) -> None:
    async with conn.transaction():
        await reverse_refunds(conn, [(r, {}) for r in refunds])


async def reversed_events(
    conn: asyncpg.Connection, mall_id: str
) -> list[events_pb2.PointsReversed]:
    rows = await conn.fetch(
        """SELECT payload FROM outbox WHERE mall_id = $1 AND subject = 'points.points.reversed'
            ORDER BY seq""",
        mall_id,
    )
    return [events_pb2.PointsReversed.FromString(r["payload"]) for r in rows]


async def test_a_partial_then_a_full_refund_reverse_every_point_once(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = new_member()
    paid = payment(mall_id, member, 10_000)  # 100 points
    await credit(conn, paid)

    await reverse(conn, refund_of(paid, 3_333))  # a third: 33 points
    assert await balance(conn, mall_id, member) == 67
    await reverse(conn, refund_of(paid, 6_667))  # the rest: exactly the remaining 67

    assert await balance(conn, mall_id, member) == 0
    rows = await ledger_rows(conn, mall_id)
    assert [(r["kind"], r["points"], r["balance_after"]) for r in rows] == [
        ("credit", 100, 100),
        ("reversal", -33, 67),
        ("reversal", -67, 0),
    ]
    assert [(e.points, e.balance_after) for e in await reversed_events(conn, mall_id)] == [
        (33, 67),
        (67, 0),
    ]
    report = await conn.fetchrow(
        """SELECT earn_points, increased_points, total_points, no_points_remarks, state
             FROM wechat_points_sync WHERE mall_id = $1 AND kind = 'reversal'""",
        mall_id,
    )
    assert report is not None
    assert dict(report) == {
        "earn_points": False,
        "increased_points": 0,
        "total_points": 0,
        "no_points_remarks": "退款扣减积分100",
        "state": "PENDING",
    }


async def test_the_same_refund_delivered_twice_reverses_once(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = new_member()
    paid = payment(mall_id, member, 5_000)
    await credit(conn, paid)
    once = refund_of(paid, 5_000)

    await reverse(conn, once)
    await reverse(conn, once)

    assert await balance(conn, mall_id, member) == 0
    assert len(await reversed_events(conn, mall_id)) == 1


async def test_a_refund_before_its_credit_is_retried_not_lost(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = new_member()
    paid = payment(mall_id, member, 5_000)
    early = refund_of(paid, 2_000)

    with pytest.raises(Unavailable) as caught:
        await reverse(conn, early)
    assert caught.value.code == "credit_not_found"
    assert await reversed_events(conn, mall_id) == []

    await credit(conn, paid)
    await reverse(conn, early)  # the redelivery, once the credit is there
    assert await balance(conn, mall_id, member) == 30


async def test_points_already_spent_take_the_balance_below_zero_for_now(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = new_member()
    first, second = payment(mall_id, member, 10_000), payment(mall_id, member, 2_000)
    await credit(conn, first, second)
    await conn.execute(  # spend 110 of 120 (an adjustment stands in for a redemption)
        """WITH e AS (INSERT INTO ledger (mall_id, member_id, kind, points, balance_after)
                      VALUES ($1, $2, 'adjustment', -110, 10) RETURNING 1)
           UPDATE accounts SET balance = 10 FROM e WHERE mall_id = $1 AND member_id = $2""",
        mall_id,
        uuid.UUID(member),
    )

    await reverse(conn, refund_of(first, 10_000))

    assert await balance(conn, mall_id, member) == -90
    sums = await conn.fetchval(
        "SELECT sum(points) FROM ledger WHERE mall_id = $1 AND member_id = $2",
        mall_id,
        uuid.UUID(member),
    )
    assert sums == -90  # the ledger still adds up to the balance
