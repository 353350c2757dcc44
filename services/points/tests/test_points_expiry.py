"""Lots and expiry on real PostgreSQL: debits take the lots expiring first, and each due lot
expires exactly once however many runs there are."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from kit.errors import InvalidInput
from kit.migrations import migrate
from mall.points.v1 import events_pb2, points_service_pb2
from mall_testing.plugin import FreshDatabase
from points.bootstrap import MIGRATIONS
from points.domain.expiry import ExpiryPolicy, lot_points
from points.domain.model import AttributedPayment, AttributedRefund
from points.domain.redemption import Adjustment, HoldRequest
from points.entrypoints.expiry import expiry_commands
from points.entrypoints.grpc_admin import PointsAdminServicer
from points.entrypoints.policy import policy_commands
from points.service_layer.adjustments import adjust_points
from points.service_layer.credits import credit_payments
from points.service_layer.expiry import EXPIRY_LOCK, expire_all, expire_due
from points.service_layer.redemptions import confirm_hold, hold_points
from points.service_layer.reversals import reverse_refunds

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: Every lot earned in 2025 is due from here (end of 2026 in Shanghai); 2026's are not.
NEW_YEAR_2027 = datetime(2027, 1, 1, tzinfo=SHANGHAI)


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


def payment(mall_id: str, member_id: str, points: int, paid_at: datetime) -> AttributedPayment:
    return AttributedPayment(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=member_id,
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        tenant_id="coffee-corner",
        amount_fen=points * 100,
        paid_at=paid_at,
    )


async def credit(conn: asyncpg.Connection, *payments: AttributedPayment) -> None:
    async with conn.transaction():
        await credit_payments(conn, [(p, {}) for p in payments])


async def lots(conn: asyncpg.Connection, mall_id: str, member_id: str) -> list[asyncpg.Record]:
    """The member's lots, oldest created first."""
    return await conn.fetch(
        """SELECT l.points_initial, l.points_remaining, l.expires_at, e.transaction_id
             FROM lots l JOIN ledger e ON e.mall_id = l.mall_id AND e.entry_id = l.source_entry_id
            WHERE l.mall_id = $1 AND l.member_id = $2 ORDER BY l.source_entry_id""",
        mall_id,
        uuid.UUID(member_id),
    )


async def remaining(conn: asyncpg.Connection, mall_id: str, member_id: str) -> list[int]:
    return [r["points_remaining"] for r in await lots(conn, mall_id, member_id)]


async def balance(conn: asyncpg.Connection, mall_id: str, member_id: str) -> int:
    value = await conn.fetchval(
        "SELECT balance FROM accounts WHERE mall_id = $1 AND member_id = $2",
        mall_id,
        uuid.UUID(member_id),
    )
    return int(value)


async def expiry_entries(conn: asyncpg.Connection, mall_id: str) -> list[tuple[str, int, int]]:
    rows = await conn.fetch(
        """SELECT member_id, points, balance_after FROM ledger
            WHERE mall_id = $1 AND kind = 'expiry' ORDER BY member_id""",
        mall_id,
    )
    return [(str(r["member_id"]), r["points"], r["balance_after"]) for r in rows]


async def expired_events(conn: asyncpg.Connection, mall_id: str) -> list[events_pb2.PointsExpired]:
    rows = await conn.fetch(
        """SELECT payload FROM outbox WHERE mall_id = $1 AND subject = 'points.points.expired'
            ORDER BY seq""",
        mall_id,
    )
    return [events_pb2.PointsExpired.FromString(r["payload"]) for r in rows]


async def unbalanced(conn: asyncpg.Connection, mall_id: str) -> list[str]:
    rows = await conn.fetch(
        """SELECT a.member_id FROM accounts a
             LEFT JOIN (SELECT member_id, sum(points) AS total FROM ledger
                         WHERE mall_id = $1 GROUP BY member_id) l USING (member_id)
            WHERE a.mall_id = $1 AND a.balance <> coalesce(l.total, 0)""",
        mall_id,
    )
    return [str(r["member_id"]) for r in rows]


# -- the policy (pure) -------------------------------------------------------------------------


def test_points_expire_when_the_year_after_they_were_earned_ends_in_shanghai() -> None:
    policy = ExpiryPolicy.parse("end_of_next_year")
    assert policy.expires_at(datetime(2025, 11, 26, 6, 30, tzinfo=UTC)) == NEW_YEAR_2027
    # 2025-12-31 17:00 UTC is already 2026 in Shanghai.
    assert policy.expires_at(datetime(2025, 12, 31, 17, tzinfo=UTC)) == datetime(
        2028, 1, 1, tzinfo=SHANGHAI
    )
    days = ExpiryPolicy.parse("days:30")
    assert days.expires_at(datetime(2025, 1, 1, tzinfo=UTC)) == datetime(2025, 1, 31, tzinfo=UTC)
    for bad in ("days:0", "days:x", "never", ""):
        with pytest.raises(InvalidInput):
            ExpiryPolicy.parse(bad)


def test_points_that_settle_a_debt_fill_no_lot() -> None:
    assert lot_points(100, 100) == 100
    assert lot_points(100, 70) == 70  # 30 paid back a negative balance
    assert lot_points(100, -5) == 0


# -- lots ------------------------------------------------------------------------------------


async def test_a_credit_fills_a_lot_by_the_malls_policy(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = str(uuid.uuid4())
    paid = payment(mall_id, member, 123, datetime(2025, 11, 26, 6, 30, tzinfo=UTC))
    await credit(conn, paid)
    await credit(conn, paid)  # redelivered: no second lot

    [lot] = await lots(conn, mall_id, member)
    assert (lot["points_initial"], lot["points_remaining"]) == (123, 123)
    assert lot["expires_at"] == NEW_YEAR_2027
    assert lot["transaction_id"] == paid.transaction_id

    other = str(uuid.uuid4())
    async with conn.transaction():
        await credit_payments(
            conn,
            [(payment(mall_id, other, 5, datetime(2025, 3, 1, tzinfo=UTC)), {})],
            expiry=ExpiryPolicy.parse("days:30"),
        )
    [short] = await lots(conn, mall_id, other)
    assert short["expires_at"] == datetime(2025, 3, 31, tzinfo=UTC)


async def test_each_mall_expires_lots_by_its_own_policy_and_default_resets_it(
    conn: asyncpg.Connection, mall_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[asyncpg.Connection]:
        yield conn

    command = policy_commands(connect)["set-expiry-policy"]
    short_mall, long_mall = f"{mall_id}-short", f"{mall_id}-long"
    assert await command([short_mall, "days:30"]) == 0
    assert "days:30" in capsys.readouterr().out
    assert await command([long_mall, "days:400"]) == 0
    paid_at = datetime(2025, 3, 1, tzinfo=UTC)
    short_member, long_member, plain_member = (str(uuid.uuid4()) for _ in range(3))

    # One batch, three malls: each lot expires by its own mall's policy; the mall with none
    # uses the service default (the ``expiry`` argument).
    async with conn.transaction():
        await credit_payments(
            conn,
            [
                (payment(short_mall, short_member, 5, paid_at), {}),
                (payment(long_mall, long_member, 5, paid_at), {}),
                (payment(mall_id, plain_member, 5, paid_at), {}),
            ],
            expiry=ExpiryPolicy.parse("days:7"),
        )

    [short] = await lots(conn, short_mall, short_member)
    [long] = await lots(conn, long_mall, long_member)
    [plain] = await lots(conn, mall_id, plain_member)
    assert short["expires_at"] == datetime(2025, 3, 31, tzinfo=UTC)
    assert long["expires_at"] == datetime(2026, 4, 5, tzinfo=UTC)
    assert plain["expires_at"] == datetime(2025, 3, 8, tzinfo=UTC)

    assert await command([short_mall, "default"]) == 0
    assert "default" in capsys.readouterr().out
    await credit(conn, payment(short_mall, short_member, 7, paid_at))
    assert [r["expires_at"] for r in await lots(conn, short_mall, short_member)] == [
        datetime(2025, 3, 31, tzinfo=UTC),
        NEW_YEAR_2027,
    ]
    assert (
        await conn.fetchval(
            "SELECT expiry_policy FROM mall_policies WHERE mall_id = $1", short_mall
        )
        is None
    )

    assert await command([long_mall, "days:0"]) == 2
    assert await command([long_mall, "never"]) == 2
    assert await command([long_mall]) == 2
    assert await command(["", "days:3"]) == 2
    assert (
        await conn.fetchval("SELECT expiry_policy FROM mall_policies WHERE mall_id = $1", long_mall)
        == "days:400"
    )


async def test_debits_take_the_lots_expiring_first_and_never_fail_when_short(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = str(uuid.uuid4())
    late = payment(mall_id, member, 100, datetime(2026, 3, 1, tzinfo=UTC))  # expires 2028
    early = payment(mall_id, member, 100, datetime(2025, 6, 1, tzinfo=UTC))  # expires 2027
    latest = payment(mall_id, member, 100, datetime(2026, 5, 1, tzinfo=UTC))  # 2028, created last
    await credit(conn, late)
    await credit(conn, early, latest)

    hold, _ = await hold_points(
        conn, HoldRequest(mall_id, member, 150, "coupon", "stock-espresso", str(uuid.uuid4()))
    )
    await confirm_hold(conn, mall_id, hold.hold_id)
    assert await remaining(conn, mall_id, member) == [50, 0, 100]

    async with conn.transaction():
        await reverse_refunds(
            conn,
            [
                (
                    AttributedRefund(
                        event_id=str(uuid.uuid4()),
                        mall_id=mall_id,
                        member_id=member,
                        transaction_id=latest.transaction_id,
                        refund_id=f"refund-{uuid.uuid4().hex[:8]}",
                        refund_amount_fen=latest.amount_fen,
                        pay_amount_fen=latest.amount_fen,
                    ),
                    {},
                )
            ],
        )
    assert await remaining(conn, mall_id, member) == [0, 0, 50]

    # A removal by ops takes from the lots like a redemption.
    await adjust_points(conn, Adjustment(mall_id, member, -50, "fraud", "ops-alice", "adj-1"))
    assert await remaining(conn, mall_id, member) == [0, 0, 0]
    assert await balance(conn, mall_id, member) == 0

    # A negative balance: the next credit pays the debt first, and only the rest can expire.
    early_refund = AttributedRefund(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=member,
        transaction_id=early.transaction_id,
        refund_id=f"refund-{uuid.uuid4().hex[:8]}",
        refund_amount_fen=early.amount_fen // 2,
        pay_amount_fen=early.amount_fen,
    )
    async with conn.transaction():
        await reverse_refunds(conn, [(early_refund, {})])
    assert await balance(conn, mall_id, member) == -50
    await credit(conn, payment(mall_id, member, 80, datetime(2026, 6, 1, tzinfo=UTC)))
    assert await remaining(conn, mall_id, member) == [0, 0, 0, 30]
    assert await balance(conn, mall_id, member) == 30
    assert await unbalanced(conn, mall_id) == []


# -- expiry ----------------------------------------------------------------------------------


async def test_expiry_writes_one_entry_per_member_and_takes_exactly_the_lots_left(
    conn: asyncpg.Connection, points_db: str, mall_id: str
) -> None:
    first, second = sorted(str(uuid.uuid4()) for _ in range(2))
    in_2025 = datetime(2025, 8, 1, tzinfo=UTC)
    await credit(
        conn,
        payment(mall_id, first, 100, in_2025),
        payment(mall_id, first, 50, in_2025),
        payment(mall_id, first, 30, datetime(2026, 2, 1, tzinfo=UTC)),  # not due yet
        payment(mall_id, second, 40, in_2025),
    )
    hold, _ = await hold_points(
        conn, HoldRequest(mall_id, second, 10, "parking", "plate-1", str(uuid.uuid4()))
    )
    await confirm_hold(conn, mall_id, hold.hold_id)

    await expire_due(conn, datetime(2026, 12, 31, 15, 59, tzinfo=UTC))  # a minute early
    assert await expiry_entries(conn, mall_id) == []
    await expire_due(conn, NEW_YEAR_2027)

    assert await expiry_entries(conn, mall_id) == [(first, -150, 30), (second, -30, 0)]
    assert await remaining(conn, mall_id, first) == [0, 0, 30]
    assert await remaining(conn, mall_id, second) == [0]
    events = await expired_events(conn, mall_id)
    assert sorted((e.member_id, e.points, e.balance_after) for e in events) == [
        (first, 50, 30),
        (first, 100, 30),
        (second, 30, 0),
    ]
    assert len({e.lot_id for e in events}) == 3

    await expire_due(conn, NEW_YEAR_2027)  # run again: nothing left to expire
    assert len(await expiry_entries(conn, mall_id)) == 2
    assert await unbalanced(conn, mall_id) == []

    async with asyncpg.create_pool(points_db, min_size=1, max_size=2) as pool:
        today = datetime.now(SHANGHAI).date().isoformat()
        report = await PointsAdminServicer(pool).GetReconciliation(
            points_service_pb2.GetReconciliationRequest(mall_id=mall_id, business_date=today),
            None,
        )
    assert report.points_expired == 180
    assert (report.accounts_checked, list(report.unbalanced_member_ids)) == (2, [])


async def test_two_runs_in_parallel_expire_each_lot_once(
    conn: asyncpg.Connection, points_db: str, mall_id: str
) -> None:
    await expire_all(conn, NEW_YEAR_2027)  # what earlier tests left due
    members = sorted(str(uuid.uuid4()) for _ in range(6))
    in_2025 = datetime(2025, 8, 1, tzinfo=UTC)
    await credit(conn, *(payment(mall_id, m, 10 + i, in_2025) for i, m in enumerate(members)))
    await credit(conn, *(payment(mall_id, m, 5, in_2025) for m in members))

    one, two = await asyncpg.connect(points_db), await asyncpg.connect(points_db)
    try:
        runs = await asyncio.gather(
            expire_all(one, NEW_YEAR_2027, limit=2), expire_all(two, NEW_YEAR_2027, limit=2)
        )
    finally:
        await one.close()
        await two.close()

    expected = sum(15 + i for i in range(6))
    assert sum(r.points for r in runs if r is not None) == expected
    assert sum(r.lots for r in runs if r is not None) == 12
    assert await expiry_entries(conn, mall_id) == [(m, -(15 + i), 0) for i, m in enumerate(members)]
    assert len(await expired_events(conn, mall_id)) == 12
    assert await unbalanced(conn, mall_id) == []


async def test_the_periodic_job_leaves_the_work_to_the_replica_holding_the_lock(
    conn: asyncpg.Connection, points_db: str, mall_id: str
) -> None:
    member = str(uuid.uuid4())
    await credit(conn, payment(mall_id, member, 7, datetime(2025, 8, 1, tzinfo=UTC)))
    other = await asyncpg.connect(points_db)
    try:
        async with other.transaction():
            await other.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", EXPIRY_LOCK
            )
            assert await expire_all(conn, NEW_YEAR_2027, exclusive=True) is None
            assert await expiry_entries(conn, mall_id) == []
    finally:
        await other.close()
    done = await expire_all(conn, NEW_YEAR_2027, exclusive=True)
    assert done is not None
    assert await expiry_entries(conn, mall_id) == [(member, -7, 0)]


async def test_the_ops_command_expires_what_is_due_now(
    conn: asyncpg.Connection, mall_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    member = str(uuid.uuid4())
    await credit(conn, payment(mall_id, member, 9, datetime(2020, 8, 1, tzinfo=UTC)))

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[asyncpg.Connection]:
        yield conn

    assert await expiry_commands(connect)["expire-points"]([]) == 0
    assert json.loads(capsys.readouterr().out)["points"] >= 9
    assert await expiry_entries(conn, mall_id) == [(member, -9, 0)]
    assert await expiry_commands(connect)["expire-points"](["now"]) == 2
