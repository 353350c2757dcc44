"""The real points service over gRPC: balances, ledger pages, stable error codes, tenancy."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import pytest
from kit.cli import serving
from kit.grpc_errors import from_rpc_error
from kit.migrations import migrate
from kit.proto import to_datetime
from mall.common.v1 import common_pb2
from mall.points.v1 import points_pb2, points_service_pb2, points_service_pb2_grpc
from mall_testing.plugin import FreshDatabase
from points.bootstrap import MIGRATIONS, bootstrap
from points.config import Settings
from points.domain.model import AttributedPayment
from points.service_layer.credits import credit_payments


@dataclass(frozen=True)
class PointsApi:
    database_url: str
    points: points_service_pb2_grpc.PointsServiceAsyncStub
    target: str


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
        yield PointsApi(
            url,
            points_service_pb2_grpc.PointsServiceStub(channel),
            target,
        )


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """The status and stable error code of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return caught.value.code(), error.code


async def credit(api: PointsApi, mall_id: str, member_id: str, *amounts_fen: int) -> list[str]:
    """Credit one payment per amount (one transaction each); their transaction ids in order."""
    transaction_ids = []
    conn = await asyncpg.connect(api.database_url)
    try:
        for amount in amounts_fen:
            payment = AttributedPayment(
                event_id=str(uuid.uuid4()),
                mall_id=mall_id,
                member_id=member_id,
                transaction_id=f"4200{uuid.uuid4().hex[:20]}",
                tenant_id="coffee-corner",
                amount_fen=amount,
                paid_at=datetime.now(UTC),
            )
            async with conn.transaction():
                await credit_payments(conn, [(payment, {})])
            transaction_ids.append(payment.transaction_id)
    finally:
        await conn.close()
    return transaction_ids


def ledger_request(
    mall_id: str, member_id: str, *, page_size: int = 0, page_token: str = ""
) -> points_service_pb2.ListLedgerRequest:
    return points_service_pb2.ListLedgerRequest(
        mall_id=mall_id,
        member_id=member_id,
        page=common_pb2.PageRequest(page_size=page_size, page_token=page_token),
    )


def account_request(mall_id: str, member_id: str) -> points_service_pb2.GetAccountRequest:
    return points_service_pb2.GetAccountRequest(mall_id=mall_id, member_id=member_id)


# -- accounts -------------------------------------------------------------------------------


async def test_get_account_reports_the_balance(api: PointsApi, unique_id: str) -> None:
    mall_id, member_id = f"mall-{unique_id}", str(uuid.uuid4())
    await credit(api, mall_id, member_id, 12_345, 5_000)

    reply = await api.points.GetAccount(account_request(mall_id, member_id), timeout=10)

    account = reply.account
    assert (account.mall_id, account.member_id) == (mall_id, member_id)
    assert (account.balance, account.available, account.lifetime_earned) == (173, 173, 173)
    assert account.updated_at.seconds > 0
    # The credit's lot is what expires first, and it expires after the credit.
    assert reply.next_expiring.points == 173
    assert to_datetime(reply.next_expiring.expires_at) > to_datetime(account.updated_at)


async def test_an_account_never_credited_is_empty(api: PointsApi, unique_id: str) -> None:
    member_id = str(uuid.uuid4())

    reply = await api.points.GetAccount(account_request(f"mall-{unique_id}", member_id))

    assert (reply.account.balance, reply.account.lifetime_earned) == (0, 0)
    assert reply.account.member_id == member_id
    assert not reply.HasField("next_expiring")


# -- the ledger -----------------------------------------------------------------------------


async def test_the_ledger_pages_newest_first(api: PointsApi, unique_id: str) -> None:
    mall_id, member_id = f"mall-{unique_id}", str(uuid.uuid4())
    transactions = await credit(api, mall_id, member_id, 100, 200, 300, 400, 500)

    pages: list[list[points_pb2.LedgerEntry]] = []
    tokens: list[str] = []
    token = ""
    while True:
        reply = await api.points.ListLedger(
            ledger_request(mall_id, member_id, page_size=2, page_token=token), timeout=10
        )
        pages.append(list(reply.entries))
        token = reply.page.next_page_token
        tokens.append(token)
        if not token or len(pages) > 5:
            break

    assert [len(p) for p in pages] == [2, 2, 1]
    assert tokens[-1] == ""
    assert all(tokens[:-1])
    entries = [e for page in pages for e in page]
    assert [e.transaction_id for e in entries] == transactions[::-1]
    assert [e.points for e in entries] == [5, 4, 3, 2, 1]
    assert [e.balance_after for e in entries] == [15, 10, 6, 3, 1]
    assert {e.kind for e in entries} == {points_pb2.LEDGER_ENTRY_KIND_CREDIT}
    assert len({e.entry_id for e in entries}) == 5


async def test_one_page_holds_everything_when_it_fits(api: PointsApi, unique_id: str) -> None:
    mall_id, member_id = f"mall-{unique_id}", str(uuid.uuid4())
    await credit(api, mall_id, member_id, 100, 200)

    reply = await api.points.ListLedger(ledger_request(mall_id, member_id), timeout=10)

    assert [e.points for e in reply.entries] == [2, 1]
    assert reply.page.next_page_token == ""


async def test_the_ledger_narrows_to_one_payment_of_the_member(
    api: PointsApi, unique_id: str
) -> None:
    mall_id, member_id, other = f"mall-{unique_id}", str(uuid.uuid4()), str(uuid.uuid4())
    first, second = await credit(api, mall_id, member_id, 1_000, 2_500)
    [theirs] = await credit(api, mall_id, other, 3_000)

    def narrowed(member: str, transaction_id: str) -> points_service_pb2.ListLedgerRequest:
        request = ledger_request(mall_id, member)
        request.transaction_id = transaction_id
        return request

    mine = await api.points.ListLedger(narrowed(member_id, second), timeout=10)
    not_mine = await api.points.ListLedger(narrowed(member_id, theirs), timeout=10)

    assert [(e.transaction_id, e.points) for e in mine.entries] == [(second, 25)]
    assert first != second
    assert list(not_mine.entries) == []


async def test_entries_of_another_mall_are_not_visible(api: PointsApi, unique_id: str) -> None:
    member_id = str(uuid.uuid4())
    here, there = f"mall-{unique_id}", f"mall-{unique_id}-b"
    [mine] = await credit(api, here, member_id, 1_000)
    await credit(api, there, member_id, 90_000, 80_000)

    ledger = await api.points.ListLedger(ledger_request(here, member_id), timeout=10)
    account = await api.points.GetAccount(account_request(here, member_id), timeout=10)

    assert [e.transaction_id for e in ledger.entries] == [mine]
    assert account.account.balance == 10
    assert ledger.page.next_page_token == ""


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("member_id", ["", "not-a-uuid", "12345"])
async def test_a_malformed_member_id_is_invalid(
    api: PointsApi, unique_id: str, member_id: str
) -> None:
    mall_id = f"mall-{unique_id}"

    for call in (
        api.points.GetAccount(account_request(mall_id, member_id), timeout=10),
        api.points.ListLedger(ledger_request(mall_id, member_id), timeout=10),
    ):
        assert await refused(call) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_member_id")


async def test_a_missing_mall_is_invalid(api: PointsApi) -> None:
    status = await refused(api.points.GetAccount(account_request("", str(uuid.uuid4()))))

    assert status == (grpc.StatusCode.INVALID_ARGUMENT, "missing_field")


@pytest.mark.parametrize(
    "token", ["abc", "-1", "1.5", " 7", "²", "١٢", "99999999999999999999999999"]
)
async def test_a_page_token_the_api_never_issued_is_invalid(
    api: PointsApi, unique_id: str, token: str
) -> None:
    request = ledger_request(f"mall-{unique_id}", str(uuid.uuid4()), page_token=token)

    status = await refused(api.points.ListLedger(request, timeout=10))

    assert status == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_page_token")


@pytest.mark.parametrize("page_size", [-1, 101])
async def test_a_page_size_out_of_range_is_invalid(
    api: PointsApi, unique_id: str, page_size: int
) -> None:
    request = ledger_request(f"mall-{unique_id}", str(uuid.uuid4()), page_size=page_size)

    status = await refused(api.points.ListLedger(request, timeout=10))

    assert status == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_page_size")


# -- reconciliation ---------------------------------------------------------------------------


def today_in_shanghai() -> str:
    return datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()


async def test_reconciliation_sums_the_day_and_proves_every_balance(
    api: PointsApi, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    await credit(api, mall_id, first, 10_000, 2_550)
    await credit(api, mall_id, second, 50)  # a 0-point payment is still credited
    async with grpc.aio.insecure_channel(api.target) as channel:
        admin = points_service_pb2_grpc.PointsAdminServiceStub(channel)
        request = points_service_pb2.GetReconciliationRequest(
            mall_id=mall_id, business_date=today_in_shanghai()
        )

        sound = await admin.GetReconciliation(request)

        assert (sound.payments_credited, sound.points_credited) == (3, 125)
        assert (sound.accounts_checked, list(sound.unbalanced_member_ids)) == (2, [])

        # A balance changed behind the ledger's back is named.
        conn = await asyncpg.connect(api.database_url)
        try:
            await conn.execute(
                "UPDATE accounts SET balance = balance + 1 WHERE mall_id = $1 AND member_id = $2",
                mall_id,
                uuid.UUID(second),
            )
        finally:
            await conn.close()
        broken = await admin.GetReconciliation(request)
        assert list(broken.unbalanced_member_ids) == [second]

        # Another day, another mall: nothing of this one.
        other = await admin.GetReconciliation(
            points_service_pb2.GetReconciliationRequest(mall_id=mall_id, business_date="2020-01-01")
        )
        assert other.payments_credited == 0
        assert await refused(
            admin.GetReconciliation(
                points_service_pb2.GetReconciliationRequest(mall_id=mall_id, business_date="26/11")
            )
        ) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_business_date")
