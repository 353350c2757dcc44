"""Expiry reminders on real PostgreSQL: one points.points.expiring per lot, some days ahead,
once however many runs there are."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from kit.migrations import migrate
from mall.points.v1 import events_pb2
from mall_testing.plugin import FreshDatabase
from points.bootstrap import MIGRATIONS
from points.domain.expiry import ExpiryPolicy
from points.domain.model import AttributedPayment
from points.entrypoints.expiry import expiry_commands
from points.service_layer.credits import credit_payments
from points.service_layer.expiry import EXPIRY_LOCK, remind_all, remind_due

PAID = datetime(2025, 3, 1, tzinfo=UTC)
#: Lots of these tests expire 100 days after the payment.
HUNDRED_DAYS = ExpiryPolicy(days=100)
EXPIRES = PAID + timedelta(days=100)


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


async def credit(
    conn: asyncpg.Connection, mall_id: str, member_id: str, points: int, paid_at: datetime = PAID
) -> None:
    payment = AttributedPayment(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=member_id,
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        tenant_id="coffee-corner",
        amount_fen=points * 100,
        paid_at=paid_at,
    )
    async with conn.transaction():
        await credit_payments(conn, [(payment, {})], expiry=HUNDRED_DAYS)


async def reminders(conn: asyncpg.Connection, mall_id: str) -> list[events_pb2.PointsExpiring]:
    rows = await conn.fetch(
        """SELECT payload FROM outbox WHERE mall_id = $1 AND subject = 'points.points.expiring'
            ORDER BY seq""",
        mall_id,
    )
    return [events_pb2.PointsExpiring.FromString(r["payload"]) for r in rows]


async def test_a_lot_is_reminded_once_within_the_days_before_it_expires(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = str(uuid.uuid4())
    await credit(conn, mall_id, member, 12)
    await remind_all(conn, EXPIRES - timedelta(days=31))  # too early
    assert await reminders(conn, mall_id) == []

    await remind_all(conn, EXPIRES - timedelta(days=30))
    await remind_all(conn, EXPIRES - timedelta(days=29))  # again: nothing new
    [event] = await reminders(conn, mall_id)
    assert (event.mall_id, event.member_id, event.points) == (mall_id, member, 12)
    assert event.expires_at.ToDatetime(tzinfo=UTC) == EXPIRES
    assert event.event_id
    assert event.lot_id
    assert event.HasField("occurred_at")
    reminded_at = await conn.fetchval(
        "SELECT reminded_at FROM lots WHERE mall_id = $1 AND lot_id = $2",
        mall_id,
        uuid.UUID(event.lot_id),
    )
    assert reminded_at is not None


async def test_spent_and_expired_lots_get_no_reminder(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = str(uuid.uuid4())
    await credit(conn, mall_id, member, 5, PAID - timedelta(days=200))  # expired long ago
    await conn.execute(
        "UPDATE lots SET points_remaining = 0 WHERE mall_id = $1", mall_id
    )  # as if spent
    await credit(conn, mall_id, member, 6, PAID - timedelta(days=200))  # past its expiry
    await remind_due(conn, EXPIRES - timedelta(days=10))
    assert await reminders(conn, mall_id) == []


async def test_two_runs_in_parallel_remind_each_lot_once(
    conn: asyncpg.Connection, points_db: str, mall_id: str
) -> None:
    now = EXPIRES - timedelta(days=20)
    await remind_all(conn, now)  # what earlier tests left to remind
    members = [str(uuid.uuid4()) for _ in range(7)]
    for i, m in enumerate(members):
        await credit(conn, mall_id, m, 10 + i)
    one, two = await asyncpg.connect(points_db), await asyncpg.connect(points_db)
    try:
        counts = await asyncio.gather(remind_all(one, now, limit=2), remind_all(two, now, limit=2))
    finally:
        await one.close()
        await two.close()
    assert sum(c or 0 for c in counts) == 7
    events = await reminders(conn, mall_id)
    assert sorted(e.member_id for e in events) == sorted(members)


async def test_the_job_leaves_reminders_to_the_replica_holding_the_lock(
    conn: asyncpg.Connection, points_db: str, mall_id: str
) -> None:
    now = EXPIRES - timedelta(days=20)
    await credit(conn, mall_id, str(uuid.uuid4()), 3)
    other = await asyncpg.connect(points_db)
    try:
        async with other.transaction():
            await other.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", EXPIRY_LOCK
            )
            assert await remind_all(conn, now, exclusive=True) is None
    finally:
        await other.close()
    assert await remind_all(conn, now, exclusive=True) == 1


async def test_the_ops_command_reminds_as_it_expires(
    conn: asyncpg.Connection, mall_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    member = str(uuid.uuid4())
    # expires 100 days after payment: paid 80 days ago is within the 30 days of reminder
    await credit(conn, mall_id, member, 4, datetime.now(UTC) - timedelta(days=80))

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[asyncpg.Connection]:
        yield conn

    assert await expiry_commands(connect, reminder_days=30)["expire-points"]([]) == 0
    assert json.loads(capsys.readouterr().out)["reminded"] >= 1
    assert [e.member_id for e in await reminders(conn, mall_id)] == [member]
