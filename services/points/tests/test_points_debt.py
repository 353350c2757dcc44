"""The mall's negative-balance policy: 'allow' (the default) or 'debt' (stop at zero, owe the
rest, settle it from the next credits), in the domain and on real PostgreSQL."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from kit.errors import InvalidInput
from kit.migrations import migrate
from mall_testing.plugin import FreshDatabase
from points.adapters import repository
from points.bootstrap import MIGRATIONS
from points.domain.debt import Debit, NegativeBalance, split_debit
from points.domain.model import AttributedPayment, AttributedRefund, BaseRate, plan_credits
from points.domain.redemption import HoldRequest
from points.entrypoints.policy import policy_commands
from points.service_layer.credits import credit_payments
from points.service_layer.policies import set_balance_policy
from points.service_layer.redemptions import confirm_hold, hold_points
from points.service_layer.reversals import reverse_refunds

PAID = datetime(2025, 11, 26, 6, 30, tzinfo=UTC)


# -- domain --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "balance", "points", "debit"),
    [
        (NegativeBalance.ALLOW, 20, 100, Debit(100)),
        (NegativeBalance.DEBT, 20, 100, Debit(20, 80)),
        (NegativeBalance.DEBT, 200, 100, Debit(100)),
        (NegativeBalance.DEBT, -5, 10, Debit(0, 10)),
        (NegativeBalance.DEBT, 0, 0, Debit(0)),
    ],
)
def test_a_debit_is_split_by_the_policy(
    policy: NegativeBalance, balance: int, points: int, debit: Debit
) -> None:
    assert split_debit(policy, balance, points) == debit


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        NegativeBalance.parse("maybe")
    assert info.value.code == "invalid_balance_policy"


def test_credits_settle_the_debt_first() -> None:
    member = str(uuid.uuid4())
    payments = [payment("m", member, 5_000), payment("m", member, 10_000)]
    credits = plan_credits(
        payments, {("m", member): 0}, set(), BaseRate(), debts={("m", member): 80}
    )
    assert [(c.points, c.settled, c.balance_after) for c in credits] == [(50, 50, 0), (100, 30, 70)]


# -- PostgreSQL ----------------------------------------------------------------------------


def payment(mall_id: str, member_id: str, amount_fen: int) -> AttributedPayment:
    return AttributedPayment(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=member_id,
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        tenant_id="coffee-corner",
        amount_fen=amount_fen,
        paid_at=PAID,
    )


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


async def credit(conn: asyncpg.Connection, *payments: AttributedPayment) -> None:
    async with conn.transaction():
        await credit_payments(conn, [(p, {}) for p in payments])


async def refund_all(conn: asyncpg.Connection, paid: AttributedPayment) -> None:
    refund = AttributedRefund(
        event_id=str(uuid.uuid4()),
        mall_id=paid.mall_id,
        member_id=paid.member_id,
        transaction_id=paid.transaction_id,
        refund_id=f"refund-{uuid.uuid4().hex[:8]}",
        refund_amount_fen=paid.amount_fen,
        pay_amount_fen=paid.amount_fen,
    )
    async with conn.transaction():
        await reverse_refunds(conn, [(refund, {})])


async def spend(conn: asyncpg.Connection, mall_id: str, member: str, points: int) -> str:
    hold, _ = await hold_points(
        conn, HoldRequest(mall_id, member, points, "coupon", "stock-1", str(uuid.uuid4()))
    )
    await confirm_hold(conn, mall_id, hold.hold_id)
    return hold.hold_id


async def position(conn: asyncpg.Connection, mall_id: str, member: str) -> tuple[int, int, int]:
    """(balance, debt, sum of the ledger)."""
    account = await repository.get_account(conn, mall_id, member)
    total = await conn.fetchval(
        "SELECT coalesce(sum(points), 0) FROM ledger WHERE mall_id = $1 AND member_id = $2",
        mall_id,
        uuid.UUID(member),
    )
    return account.balance, account.debt, int(total)


async def ledger(conn: asyncpg.Connection, mall_id: str, member: str) -> list[tuple[str, int, int]]:
    rows = await conn.fetch(
        """SELECT kind, points, balance_after FROM ledger
            WHERE mall_id = $1 AND member_id = $2 ORDER BY entry_id""",
        mall_id,
        uuid.UUID(member),
    )
    return [(r["kind"], r["points"], r["balance_after"]) for r in rows]


async def open_lots(conn: asyncpg.Connection, mall_id: str, member: str) -> int:
    value = await conn.fetchval(
        "SELECT coalesce(sum(points_remaining), 0) FROM lots WHERE mall_id = $1 AND member_id = $2",
        mall_id,
        uuid.UUID(member),
    )
    return int(value)


async def test_without_a_policy_a_refund_of_spent_points_goes_below_zero(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    member = str(uuid.uuid4())
    paid = payment(mall_id, member, 10_000)
    await credit(conn, paid)
    await spend(conn, mall_id, member, 80)
    await refund_all(conn, paid)
    assert await position(conn, mall_id, member) == (-80, 0, -80)


async def test_under_debt_a_refund_stops_at_zero_and_the_next_credits_settle_the_debt(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    assert await set_balance_policy(conn, mall_id, "debt") is NegativeBalance.DEBT
    member = str(uuid.uuid4())
    paid = payment(mall_id, member, 10_000)
    await credit(conn, paid)
    await spend(conn, mall_id, member, 80)
    await refund_all(conn, paid)
    assert await position(conn, mall_id, member) == (0, 80, 0)

    await credit(conn, payment(mall_id, member, 5_000))
    assert await position(conn, mall_id, member) == (0, 30, 0)
    await credit(conn, payment(mall_id, member, 10_000))
    assert await position(conn, mall_id, member) == (70, 0, 70)
    assert await ledger(conn, mall_id, member) == [
        ("credit", 100, 100),
        ("redemption", -80, 20),
        ("reversal", -20, 0),
        ("credit", 50, 50),
        ("debt_settlement", -50, 0),
        ("credit", 100, 100),
        ("debt_settlement", -30, 70),
    ]
    assert await open_lots(conn, mall_id, member) == 70
    account = await repository.get_account(conn, mall_id, member)
    assert account.lifetime_earned == 250


async def test_under_debt_a_confirm_after_a_refund_stops_at_zero(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    await set_balance_policy(conn, mall_id, "debt")
    member = str(uuid.uuid4())
    paid = payment(mall_id, member, 10_000)
    await credit(conn, paid)
    hold, _ = await hold_points(
        conn, HoldRequest(mall_id, member, 80, "coupon", "stock-1", str(uuid.uuid4()))
    )
    await refund_all(conn, paid)  # the held points are refunded away
    await confirm_hold(conn, mall_id, hold.hold_id)
    assert await position(conn, mall_id, member) == (0, 80, 0)
    assert (await ledger(conn, mall_id, member))[-1] == ("redemption", 0, 0)


async def test_a_batch_settles_debts_in_order_and_back_to_allow_keeps_settling(
    conn: asyncpg.Connection, mall_id: str
) -> None:
    await set_balance_policy(conn, mall_id, "debt")
    member = str(uuid.uuid4())
    paid = payment(mall_id, member, 3_000)
    await credit(conn, paid)
    await spend(conn, mall_id, member, 30)
    await refund_all(conn, paid)
    await set_balance_policy(conn, mall_id, "allow")
    await credit(conn, payment(mall_id, member, 1_000), payment(mall_id, member, 4_000))
    assert await position(conn, mall_id, member) == (20, 0, 20)
    assert [k for k, _, _ in await ledger(conn, mall_id, member)][-4:] == [
        "credit",
        "debt_settlement",
        "credit",
        "debt_settlement",
    ]


async def test_the_ops_command_sets_the_policy(
    conn: asyncpg.Connection, mall_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[asyncpg.Connection]:
        yield conn

    command = policy_commands(connect)["set-balance-policy"]
    assert await command([mall_id, "debt"]) == 0
    assert "debt" in capsys.readouterr().out
    stored = await conn.fetchval(
        "SELECT negative_balance FROM mall_policies WHERE mall_id = $1", mall_id
    )
    assert stored == "debt"
    assert await command([mall_id, "never"]) == 2
    assert await command([mall_id]) == 2
    assert await command(["", "allow"]) == 2
