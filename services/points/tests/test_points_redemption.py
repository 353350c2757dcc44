"""Redemptions (hold → confirm / release) and manual adjustments, through the real gRPC
server on real PostgreSQL; concurrency and expiry through the service layer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from kit.cli import serving
from kit.errors import Conflict
from kit.grpc_errors import from_rpc_error
from kit.migrations import migrate
from kit.proto import to_datetime
from mall.points.v1 import events_pb2, points_pb2, points_service_pb2, points_service_pb2_grpc
from mall_testing.plugin import FreshDatabase
from points.bootstrap import MIGRATIONS, bootstrap
from points.config import Settings
from points.domain.model import AttributedPayment
from points.domain.redemption import HoldRequest
from points.service_layer.credits import credit_payments
from points.service_layer.redemptions import confirm_hold, hold_points, release_hold

REDEEMED = "points.points.redeemed"
RELEASED = "points.hold.released"
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class PointsApi:
    database_url: str
    points: points_service_pb2_grpc.PointsServiceAsyncStub


@pytest.fixture(scope="module")
async def api(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[PointsApi]:
    url = await fresh_database("points")
    await migrate(url, MIGRATIONS)
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    async with (
        bootstrap(settings) as roles,
        serving(roles) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        yield PointsApi(url, points_service_pb2_grpc.PointsServiceStub(channel))


@pytest.fixture
async def db(api: PointsApi) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(api.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def member(unique_id: str) -> tuple[str, str]:
    return f"mall-{unique_id}", str(uuid.uuid4())


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return caught.value.code(), error.code


async def credit(db: asyncpg.Connection, mall_id: str, member_id: str, points: int) -> None:
    payment = AttributedPayment(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=member_id,
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        tenant_id="coffee-corner",
        amount_fen=points * 100,
        paid_at=datetime.now(UTC),
    )
    async with db.transaction():
        await credit_payments(db, [(payment, {})])


def hold_request(
    mall_id: str,
    member_id: str,
    points: int,
    *,
    request_id: str = "",
    kind: points_pb2.RewardKind.ValueType = points_pb2.REWARD_KIND_COUPON,
    ref: str = "stock-espresso",
) -> points_service_pb2.HoldPointsRequest:
    return points_service_pb2.HoldPointsRequest(
        mall_id=mall_id,
        member_id=member_id,
        points=points,
        reward_kind=kind,
        reward_ref=ref,
        request_id=request_id or str(uuid.uuid4()),
    )


def adjust_request(
    mall_id: str, member_id: str, points: int, *, request_id: str = "", reason: str = "goodwill"
) -> points_service_pb2.AdjustPointsRequest:
    return points_service_pb2.AdjustPointsRequest(
        mall_id=mall_id,
        member_id=member_id,
        points=points,
        reason=reason,
        operator="ops-alice",
        request_id=request_id or str(uuid.uuid4()),
    )


async def position(api: PointsApi, mall_id: str, member_id: str) -> tuple[int, int, int]:
    """(balance, held, available) as GetAccount reports them."""
    reply = await api.points.GetAccount(
        points_service_pb2.GetAccountRequest(mall_id=mall_id, member_id=member_id), timeout=10
    )
    return reply.account.balance, reply.account.held, reply.account.available


async def ledger(db: asyncpg.Connection, mall_id: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT kind, points, balance_after, reference, description FROM ledger"
        " WHERE mall_id = $1 ORDER BY entry_id",
        mall_id,
    )


async def outbox(db: asyncpg.Connection, mall_id: str, subject: str) -> list[bytes]:
    rows = await db.fetch(
        "SELECT payload FROM outbox WHERE mall_id = $1 AND subject = $2 ORDER BY seq",
        mall_id,
        subject,
    )
    return [r["payload"] for r in rows]


async def unbalanced_accounts(db: asyncpg.Connection) -> list[asyncpg.Record]:
    """Accounts (of every mall) whose balance is not the sum of their ledger."""
    return await db.fetch(
        """SELECT a.mall_id, a.member_id, a.balance, coalesce(sum(l.points), 0) AS total
             FROM accounts a
             LEFT JOIN ledger l USING (mall_id, member_id)
            GROUP BY a.mall_id, a.member_id, a.balance
           HAVING a.balance <> coalesce(sum(l.points), 0)"""
    )


# -- hold, then confirm ---------------------------------------------------------------------


async def test_a_confirmed_hold_spends_the_points_once(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member
    await credit(db, mall_id, member_id, 500)

    held = await api.points.HoldPoints(hold_request(mall_id, member_id, 200), timeout=10)
    assert (held.account.balance, held.account.held, held.account.available) == (500, 200, 300)
    assert await position(api, mall_id, member_id) == (500, 200, 300)
    assert to_datetime(held.expires_at) > datetime.now(UTC)  # a hold that lasts

    confirm = points_service_pb2.ConfirmHoldRequest(mall_id=mall_id, hold_id=held.hold_id)
    first = await api.points.ConfirmHold(confirm, timeout=10)
    again = await api.points.ConfirmHold(confirm, timeout=10)

    assert first.redemption_id
    assert again.redemption_id == first.redemption_id
    assert (first.account.balance, first.account.held, first.account.available) == (300, 0, 300)
    assert await position(api, mall_id, member_id) == (300, 0, 300)
    entries = await ledger(db, mall_id)
    assert [(e["kind"], e["points"], e["balance_after"]) for e in entries] == [
        ("credit", 500, 500),
        ("redemption", -200, 300),
    ]
    assert entries[-1]["reference"] == held.hold_id
    [payload] = await outbox(db, mall_id, REDEEMED)
    redeemed = events_pb2.PointsRedeemed.FromString(payload)
    assert (redeemed.redemption_id, redeemed.hold_id, redeemed.member_id) == (
        first.redemption_id,
        held.hold_id,
        member_id,
    )
    assert (redeemed.points, redeemed.balance_after) == (200, 300)
    assert (redeemed.reward_kind, redeemed.reward_ref) == (
        points_pb2.REWARD_KIND_COUPON,
        "stock-espresso",
    )

    listed = await api.points.ListLedger(
        points_service_pb2.ListLedgerRequest(mall_id=mall_id, member_id=member_id), timeout=10
    )
    assert listed.entries[0].kind == points_pb2.LEDGER_ENTRY_KIND_REDEMPTION


# -- hold, then release ---------------------------------------------------------------------


async def test_a_hold_released_after_the_reward_failed_gives_every_point_back(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member
    await credit(db, mall_id, member_id, 300)
    held = await api.points.HoldPoints(
        hold_request(mall_id, member_id, 250, kind=points_pb2.REWARD_KIND_PARKING, ref="2h"),
        timeout=10,
    )
    assert await position(api, mall_id, member_id) == (300, 250, 50)

    # The parking side fails to grant the benefit, so it gives the points back (twice: a retry).
    release = points_service_pb2.ReleaseHoldRequest(
        mall_id=mall_id, hold_id=held.hold_id, reason="car park offline"
    )
    first = await api.points.ReleaseHold(release, timeout=10)
    await api.points.ReleaseHold(release, timeout=10)

    assert (first.account.balance, first.account.held, first.account.available) == (300, 0, 300)
    assert await position(api, mall_id, member_id) == (300, 0, 300)
    assert [e["kind"] for e in await ledger(db, mall_id)] == ["credit"]
    [payload] = await outbox(db, mall_id, RELEASED)
    released = events_pb2.PointsHoldReleased.FromString(payload)
    assert (released.hold_id, released.points, released.reason) == (
        held.hold_id,
        250,
        events_pb2.HOLD_RELEASE_REASON_CANCELLED,
    )
    assert released.reward_kind == points_pb2.REWARD_KIND_PARKING
    assert await outbox(db, mall_id, REDEEMED) == []
    # The points are spendable again, all of them.
    again = await api.points.HoldPoints(hold_request(mall_id, member_id, 300), timeout=10)
    assert again.account.available == 0


async def test_a_released_hold_cannot_be_confirmed_nor_a_confirmed_one_released(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member
    await credit(db, mall_id, member_id, 100)
    released = await api.points.HoldPoints(hold_request(mall_id, member_id, 40), timeout=10)
    confirmed = await api.points.HoldPoints(hold_request(mall_id, member_id, 30), timeout=10)
    await api.points.ReleaseHold(
        points_service_pb2.ReleaseHoldRequest(mall_id=mall_id, hold_id=released.hold_id)
    )
    await api.points.ConfirmHold(
        points_service_pb2.ConfirmHoldRequest(mall_id=mall_id, hold_id=confirmed.hold_id)
    )

    assert await refused(
        api.points.ConfirmHold(
            points_service_pb2.ConfirmHoldRequest(mall_id=mall_id, hold_id=released.hold_id)
        )
    ) == (FAILED_PRECONDITION, "hold_not_held")
    assert await refused(
        api.points.ReleaseHold(
            points_service_pb2.ReleaseHoldRequest(mall_id=mall_id, hold_id=confirmed.hold_id)
        )
    ) == (FAILED_PRECONDITION, "hold_not_held")
    assert await position(api, mall_id, member_id) == (70, 0, 70)
    assert len(await outbox(db, mall_id, REDEEMED)) == 1
    assert len(await outbox(db, mall_id, RELEASED)) == 1


# -- refusals change nothing ----------------------------------------------------------------


async def test_a_hold_beyond_the_available_points_is_refused_and_changes_nothing(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member
    await credit(db, mall_id, member_id, 100)
    await api.points.HoldPoints(hold_request(mall_id, member_id, 60), timeout=10)

    status = await refused(api.points.HoldPoints(hold_request(mall_id, member_id, 41)))

    assert status == (FAILED_PRECONDITION, "insufficient_points")
    assert await position(api, mall_id, member_id) == (100, 60, 40)
    holds = await db.fetchval("SELECT count(*) FROM holds WHERE mall_id = $1", mall_id)
    assert holds == 1
    assert await outbox(db, mall_id, RELEASED) == []


async def test_a_member_without_points_cannot_hold_and_gets_no_account(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member

    status = await refused(api.points.HoldPoints(hold_request(mall_id, member_id, 1)))

    assert status == (FAILED_PRECONDITION, "insufficient_points")
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE mall_id = $1", mall_id) == 0


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"points": 0}, "invalid_points"),
        ({"points": -5}, "invalid_points"),
        ({"reward_ref": ""}, "missing_field"),
        ({"request_id": ""}, "missing_field"),
        ({"reward_kind": points_pb2.REWARD_KIND_UNSPECIFIED}, "missing_field"),
        ({"mall_id": ""}, "missing_field"),
        ({"member_id": "nobody"}, "invalid_member_id"),
    ],
)
async def test_a_malformed_hold_is_invalid(
    api: PointsApi, member: tuple[str, str], change: dict[str, Any], code: str
) -> None:
    request = hold_request(*member, 10)
    for field, value in change.items():
        setattr(request, field, value)

    assert await refused(api.points.HoldPoints(request, timeout=10)) == (INVALID, code)


async def test_an_unknown_or_malformed_hold_id_is_refused(
    api: PointsApi, member: tuple[str, str]
) -> None:
    mall_id, _ = member
    unknown = points_service_pb2.ConfirmHoldRequest(mall_id=mall_id, hold_id=str(uuid.uuid4()))
    malformed = points_service_pb2.ReleaseHoldRequest(mall_id=mall_id, hold_id="h-1")

    assert await refused(api.points.ConfirmHold(unknown)) == (
        grpc.StatusCode.NOT_FOUND,
        "hold_not_found",
    )
    assert await refused(api.points.ReleaseHold(malformed)) == (INVALID, "invalid_hold_id")


# -- idempotency and concurrency ------------------------------------------------------------


async def test_the_same_request_id_twice_makes_one_hold(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member
    await credit(db, mall_id, member_id, 100)
    request = hold_request(mall_id, member_id, 70, request_id="redeem-1")

    first = await api.points.HoldPoints(request, timeout=10)
    second = await api.points.HoldPoints(request, timeout=10)

    assert second.hold_id == first.hold_id
    assert second.expires_at == first.expires_at
    assert await position(api, mall_id, member_id) == (100, 70, 30)
    assert await db.fetchval("SELECT count(*) FROM holds WHERE mall_id = $1", mall_id) == 1
    reused = hold_request(mall_id, member_id, 20, request_id="redeem-1")
    assert await refused(api.points.HoldPoints(reused)) == (
        FAILED_PRECONDITION,
        "request_id_reused",
    )


async def test_concurrent_holds_on_one_account_never_over_commit(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member
    await credit(db, mall_id, member_id, 100)
    conns = [await asyncpg.connect(api.database_url) for _ in range(10)]

    async def attempt(conn: asyncpg.Connection) -> str:
        request = HoldRequest(mall_id, member_id, 30, "coupon", "stock-1", str(uuid.uuid4()))
        try:
            await hold_points(conn, request)
        except Conflict as error:
            return error.code
        return "held"

    try:
        outcomes = await asyncio.gather(*(attempt(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))

    assert sorted(outcomes) == ["held"] * 3 + ["insufficient_points"] * 7
    assert await position(api, mall_id, member_id) == (100, 90, 10)


# -- expiry ---------------------------------------------------------------------------------


async def test_an_expired_hold_counts_as_released(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member
    await credit(db, mall_id, member_id, 100)
    request = HoldRequest(mall_id, member_id, 80, "gift", "mug", str(uuid.uuid4()))
    hold, _ = await hold_points(db, request, ttl=timedelta(milliseconds=1))
    await asyncio.sleep(0.01)

    # Not held any more, even before anything touches it.
    assert await position(api, mall_id, member_id) == (100, 0, 100)
    with pytest.raises(Conflict) as caught:
        await confirm_hold(db, mall_id, hold.hold_id)
    assert caught.value.code == "hold_not_held"
    # The refusal still released it for good, with its event, and releasing it is a no-op.
    account = await release_hold(db, mall_id, hold.hold_id, "too late")
    assert (account.balance, account.held, account.available) == (100, 0, 100)
    state = await db.fetchval(
        "SELECT release_reason FROM holds WHERE mall_id = $1 AND hold_id = $2",
        mall_id,
        uuid.UUID(hold.hold_id),
    )
    assert state == "expired"
    [payload] = await outbox(db, mall_id, RELEASED)
    released = events_pb2.PointsHoldReleased.FromString(payload)
    assert released.reason == events_pb2.HOLD_RELEASE_REASON_EXPIRED
    assert [e["kind"] for e in await ledger(db, mall_id)] == ["credit"]


# -- manual adjustments ---------------------------------------------------------------------


async def test_an_adjustment_is_recorded_with_reason_and_operator_once(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member
    await credit(db, mall_id, member_id, 10)
    request = adjust_request(mall_id, member_id, 50, reason="receipt lost at the till")

    first = await api.points.AdjustPoints(request, timeout=10)
    again = await api.points.AdjustPoints(request, timeout=10)

    assert again.entry == first.entry
    assert first.entry.kind == points_pb2.LEDGER_ENTRY_KIND_ADJUSTMENT
    assert (first.entry.points, first.entry.balance_after) == (50, 60)
    assert (first.entry.description, first.entry.reference) == (
        "receipt lost at the till",
        "ops-alice",
    )
    assert (first.account.balance, first.account.lifetime_earned) == (60, 10)
    assert [e["kind"] for e in await ledger(db, mall_id)] == ["credit", "adjustment"]
    audit = await db.fetchrow(
        "SELECT reason, operator, points FROM adjustments WHERE mall_id = $1", mall_id
    )
    assert audit is not None
    assert tuple(audit) == ("receipt lost at the till", "ops-alice", 50)
    reused = adjust_request(mall_id, member_id, 5, request_id=request.request_id)
    assert await refused(api.points.AdjustPoints(reused)) == (
        FAILED_PRECONDITION,
        "request_id_reused",
    )


async def test_a_removal_may_not_take_held_or_missing_points(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member
    await credit(db, mall_id, member_id, 100)
    await api.points.HoldPoints(hold_request(mall_id, member_id, 70), timeout=10)

    status = await refused(api.points.AdjustPoints(adjust_request(mall_id, member_id, -31)))
    removed = await api.points.AdjustPoints(adjust_request(mall_id, member_id, -30), timeout=10)

    assert status == (FAILED_PRECONDITION, "insufficient_points")
    assert (removed.entry.points, removed.entry.balance_after) == (-30, 70)
    assert await position(api, mall_id, member_id) == (70, 70, 0)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"points": 0}, "invalid_points"),
        ({"reason": ""}, "missing_field"),
        ({"reason": "   "}, "missing_field"),
        ({"operator": ""}, "missing_field"),
        ({"request_id": ""}, "missing_field"),
    ],
)
async def test_a_malformed_adjustment_is_invalid(
    api: PointsApi,
    db: asyncpg.Connection,
    member: tuple[str, str],
    change: dict[str, Any],
    code: str,
) -> None:
    request = adjust_request(*member, 10)
    for field, value in change.items():
        setattr(request, field, value)

    assert await refused(api.points.AdjustPoints(request, timeout=10)) == (INVALID, code)
    assert await ledger(db, member[0]) == []


# -- the books balance ----------------------------------------------------------------------


async def test_the_ledger_adds_up_to_every_balance_after_redemptions_and_adjustments(
    api: PointsApi, db: asyncpg.Connection, member: tuple[str, str]
) -> None:
    mall_id, member_id = member
    await credit(db, mall_id, member_id, 400)
    holds = [
        await api.points.HoldPoints(hold_request(mall_id, member_id, p), timeout=10)
        for p in (100, 50, 25)
    ]
    await api.points.ConfirmHold(
        points_service_pb2.ConfirmHoldRequest(mall_id=mall_id, hold_id=holds[0].hold_id)
    )
    await api.points.ReleaseHold(
        points_service_pb2.ReleaseHoldRequest(mall_id=mall_id, hold_id=holds[1].hold_id)
    )
    await api.points.AdjustPoints(adjust_request(mall_id, member_id, -75), timeout=10)
    await api.points.AdjustPoints(adjust_request(mall_id, member_id, 20), timeout=10)

    assert await position(api, mall_id, member_id) == (245, 25, 220)
    assert [e["balance_after"] for e in await ledger(db, mall_id)] == [400, 300, 225, 245]
    assert await unbalanced_accounts(db) == []
