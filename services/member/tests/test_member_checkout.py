"""Identification at checkout (会员识别), tenant credentials and POS-reported payments,
through the real gRPC server on real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from kit.cli import serving
from kit.credentials import hash_secret, parse_presented, verify_secret
from kit.grpc_errors import from_rpc_error
from kit.migrations import migrate
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.member.v1 import events_pb2, member_pb2, member_service_pb2, member_service_pb2_grpc
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS, bootstrap
from member.config import Settings
from member.domain.checkout import CODE_DIGITS, code_hash, new_code
from member.domain.model import CapturedPayment
from member.service_layer.payments import attribute_payments

CACHE_S = 0.3
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MemberApi:
    database_url: str
    directory: member_service_pb2_grpc.DirectoryServiceAsyncStub
    members: member_service_pb2_grpc.MemberServiceAsyncStub


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[MemberApi]:
    async with (
        bootstrap(settings) as roles,
        serving(roles) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        yield MemberApi(
            settings.database_url,
            member_service_pb2_grpc.DirectoryServiceStub(channel),
            member_service_pb2_grpc.MemberServiceStub(channel),
        )


def settings_for(url: str, nats_url: str, **overrides: Any) -> Settings:
    return Settings(
        database_url=url,
        nats_url=nats_url,
        grpc_port=0,
        log_level="warning",
        credential_cache_s=CACHE_S,
        **overrides,
    )


@pytest.fixture(scope="module")
async def database(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("member")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture(scope="module")
async def api(database: str, nats_url: str) -> AsyncIterator[MemberApi]:
    async with serve(settings_for(database, nats_url)) as served:
        yield served


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """The status and stable error code of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return caught.value.code(), error.code


@dataclass(frozen=True)
class Mall:
    mall_id: str
    appid: str
    coffee: Metadata  # credential of tenant "coffee" (store coffee-l1, shop SHOP-001)
    books: Metadata  # credential of tenant "books" (store books-l2, shop SHOP-002)
    coffee_credential_id: str


def presented(credential_id: str, secret: str) -> Metadata:
    return (("x-mall-credential", f"{credential_id}.{secret}"),)


async def issue(api: MemberApi, mall_id: str, tenant_id: str) -> tuple[str, str]:
    issued = await api.directory.IssueCredential(
        member_service_pb2.IssueCredentialRequest(
            mall_id=mall_id, tenant_id=tenant_id, label="POS lane 1"
        ),
        timeout=10,
    )
    return issued.credential.credential_id, issued.secret


async def onboard(api: MemberApi, tag: str) -> Mall:
    mall_id, appid = f"mall-{tag}", f"wx{tag}"
    await api.directory.CreateMall(
        member_service_pb2.CreateMallRequest(mall_id=mall_id, name=f"Mall {tag}", appid=appid),
        timeout=10,
    )
    for tenant, store, shop in (
        ("coffee", "coffee-l1", "SHOP-001"),
        ("books", "books-l2", "SHOP-002"),
    ):
        await api.directory.CreateTenant(
            member_service_pb2.CreateTenantRequest(mall_id=mall_id, tenant_id=tenant, name=tenant),
            timeout=10,
        )
        await api.directory.CreateStore(
            member_service_pb2.CreateStoreRequest(
                mall_id=mall_id, tenant_id=tenant, store_id=store, name=store, shop_number=shop
            ),
            timeout=10,
        )
    coffee_id, coffee_secret = await issue(api, mall_id, "coffee")
    books_id, books_secret = await issue(api, mall_id, "books")
    return Mall(
        mall_id,
        appid,
        presented(coffee_id, coffee_secret),
        presented(books_id, books_secret),
        coffee_id,
    )


async def pay_with_wechat(api: MemberApi, mall: Mall, shop_number: str, openid: str) -> str:
    """A WeChat Pay payment attributed in member's database; the member it went to."""
    payment = CapturedPayment(
        event_id=str(uuid.uuid4()),
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        appid=mall.appid,
        mchid="1900000109",
        shop_number=shop_number,
        openid=openid,
        amount_fen=8_800,
        paid_at=datetime.now(UTC),
    )
    conn = await asyncpg.connect(api.database_url)
    try:
        async with conn.transaction():
            [done] = await attribute_payments(conn, [(payment, {})])
    finally:
        await conn.close()
    return done.member.member_id


async def code_for(api: MemberApi, mall_id: str, member_id: str) -> str:
    issued = await api.members.IssueCheckoutCode(
        member_service_pb2.IssueCheckoutCodeRequest(mall_id=mall_id, member_id=member_id),
        timeout=10,
    )
    return issued.code


def by_code(mall_id: str, store_id: str, code: str) -> member_service_pb2.IdentifyMemberRequest:
    return member_service_pb2.IdentifyMemberRequest(
        mall_id=mall_id, store_id=store_id, checkout_code=code
    )


def by_openid(mall_id: str, store_id: str, openid: str) -> member_service_pb2.IdentifyMemberRequest:
    return member_service_pb2.IdentifyMemberRequest(
        mall_id=mall_id,
        store_id=store_id,
        identity=member_pb2.Identity(identity_type=member_pb2.IDENTITY_TYPE_OPENID, value=openid),
    )


def receipt(mall: Mall, **overrides: Any) -> member_service_pb2.ReportPaymentRequest:
    fields: dict[str, Any] = {
        "mall_id": mall.mall_id,
        "store_id": "coffee-l1",
        "amount_fen": 3_500,
        "source": common_pb2.PAYMENT_SOURCE_POS_CASH,
        "paid_at": timestamp(datetime.now(UTC)),
    }
    return member_service_pb2.ReportPaymentRequest(**(fields | overrides))


# -- domain ---------------------------------------------------------------------------------


def test_a_secret_verifies_only_against_its_own_hash() -> None:
    stored = hash_secret("s3cret")

    assert stored.startswith("scrypt$")
    assert "s3cret" not in stored
    assert verify_secret("s3cret", stored)
    assert not verify_secret("s3cret!", stored)
    assert not verify_secret("s3cret", "md5$nonsense")
    assert hash_secret("s3cret") != stored  # a salt per credential


def test_a_presented_credential_must_name_id_and_secret() -> None:
    assert parse_presented("cred-1.abc") == ("cred-1", "abc")
    for bad in ("", "cred-1", "cred-1.", ".abc"):
        with pytest.raises(Exception, match="malformed"):
            parse_presented(bad)


def test_checkout_codes_are_fresh_digits() -> None:
    codes = {new_code() for _ in range(1000)}

    assert len(codes) == 1000
    assert all(len(c) == CODE_DIGITS and c.isdigit() for c in codes)
    assert len(code_hash(codes.pop())) == 32


# -- credentials ----------------------------------------------------------------------------


async def test_an_issued_credential_is_stored_hashed_and_shown_once(
    api: MemberApi, unique_id: str
) -> None:
    mall = await onboard(api, unique_id)

    issued = await api.directory.IssueCredential(
        member_service_pb2.IssueCredentialRequest(
            mall_id=mall.mall_id, tenant_id="coffee", label="lane 2"
        ),
        timeout=10,
    )

    assert issued.secret
    assert issued.credential.tenant_id == "coffee"
    assert issued.credential.secret_hash == ""
    conn = await asyncpg.connect(api.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT secret_hash FROM credentials WHERE mall_id = $1 AND credential_id = $2",
            mall.mall_id,
            issued.credential.credential_id,
        )
        announced = await conn.fetchval(
            """SELECT count(*) FROM outbox WHERE mall_id = $1
                AND subject = 'member.directory.credential_upserted'""",
            mall.mall_id,
        )
    finally:
        await conn.close()
    assert stored.startswith("scrypt$")
    assert issued.secret not in stored
    assert verify_secret(issued.secret, stored)
    assert announced == 3


async def test_a_credential_for_an_unknown_tenant_is_not_issued(
    api: MemberApi, unique_id: str
) -> None:
    mall = await onboard(api, unique_id)

    status, code = await refused(
        api.directory.IssueCredential(
            member_service_pb2.IssueCredentialRequest(mall_id=mall.mall_id, tenant_id="nobody"),
            timeout=10,
        )
    )

    assert (status, code) == (grpc.StatusCode.NOT_FOUND, "unknown_tenant")


async def test_a_car_park_is_created_and_its_system_gets_a_credential(
    api: MemberApi, unique_id: str
) -> None:
    mall = await onboard(api, unique_id)
    status, code = await refused(
        api.directory.IssueCredential(
            member_service_pb2.IssueCredentialRequest(mall_id=mall.mall_id, car_park_id="p1"),
            timeout=10,
        )
    )
    assert (status, code) == (grpc.StatusCode.NOT_FOUND, "unknown_car_park")

    created = await api.directory.CreateCarPark(
        member_service_pb2.CreateCarParkRequest(
            mall_id=mall.mall_id, car_park_id="p1", name="North car park"
        ),
        timeout=10,
    )
    renamed = await api.directory.CreateCarPark(
        member_service_pb2.CreateCarParkRequest(mall_id=mall.mall_id, car_park_id="p1", name="B2"),
        timeout=10,
    )
    issued = await api.directory.IssueCredential(
        member_service_pb2.IssueCredentialRequest(
            mall_id=mall.mall_id, car_park_id="p1", label="gates"
        ),
        timeout=10,
    )

    assert (created.car_park.car_park_id, created.car_park.name) == ("p1", "North car park")
    assert renamed.car_park.name == "B2"
    assert renamed.car_park.created_at == created.car_park.created_at
    assert issued.credential.car_park_id == "p1"
    assert issued.secret
    status, code = await refused(
        api.directory.CreateCarPark(
            member_service_pb2.CreateCarParkRequest(
                mall_id="no-such-mall", car_park_id="p1", name="x"
            ),
            timeout=10,
        )
    )
    assert (status, code) == (grpc.StatusCode.NOT_FOUND, "unknown_mall")


@pytest.mark.parametrize(
    "metadata",
    [(), (("x-mall-credential", "garbage"),), (("x-mall-credential", "cred-0000.nope"),)],
)
async def test_a_tenant_rpc_without_a_valid_credential_is_unauthenticated(
    api: MemberApi, unique_id: str, metadata: Metadata
) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")
    code = await code_for(api, mall.mall_id, member_id)

    status, reason = await refused(
        api.members.IdentifyMember(by_code(mall.mall_id, "coffee-l1", code), metadata=metadata)
    )

    assert (status, reason) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_credential")
    identified = await api.members.IdentifyMember(  # the code was not used up by the refusal
        by_code(mall.mall_id, "coffee-l1", code), metadata=mall.coffee
    )
    assert identified.member.member_id == member_id


async def test_a_wrong_secret_is_refused(api: MemberApi, unique_id: str) -> None:
    mall = await onboard(api, unique_id)
    wrong = presented(mall.coffee_credential_id, "not-the-secret")

    status, reason = await refused(
        api.members.ReportPayment(
            receipt(mall, member_id=str(uuid.uuid4()), receipt_no="R-1"), metadata=wrong
        )
    )

    assert (status, reason) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_credential")


async def test_a_revoked_credential_stops_working_within_the_cache_time(
    api: MemberApi, unique_id: str
) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")
    await api.members.ReportPayment(
        receipt(mall, member_id=member_id, receipt_no="R-1"), metadata=mall.coffee
    )

    revoked = await api.directory.RevokeCredential(
        member_service_pb2.RevokeCredentialRequest(
            mall_id=mall.mall_id, credential_id=mall.coffee_credential_id
        ),
        timeout=10,
    )
    again = await api.directory.RevokeCredential(
        member_service_pb2.RevokeCredentialRequest(
            mall_id=mall.mall_id, credential_id=mall.coffee_credential_id
        ),
        timeout=10,
    )
    await asyncio.sleep(CACHE_S + 0.1)

    assert revoked.credential.HasField("revoked_at")
    assert again.credential.revoked_at == revoked.credential.revoked_at  # idempotent
    status, reason = await refused(
        api.members.ReportPayment(
            receipt(mall, member_id=member_id, receipt_no="R-2"), metadata=mall.coffee
        )
    )
    assert (status, reason) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_credential")


async def test_a_credential_of_another_mall_is_forbidden(api: MemberApi, unique_id: str) -> None:
    mall = await onboard(api, unique_id)
    other = await onboard(api, f"{unique_id}-b")
    member_id = await pay_with_wechat(api, other, "SHOP-001", f"o-{unique_id}")
    code = await code_for(api, other.mall_id, member_id)

    status, reason = await refused(
        api.members.IdentifyMember(by_code(other.mall_id, "coffee-l1", code), metadata=mall.coffee)
    )

    assert (status, reason) == (grpc.StatusCode.PERMISSION_DENIED, "mall_not_yours")


@pytest.mark.parametrize("store_id", ["books-l2", "no-such-store"])
async def test_a_tenant_cannot_identify_at_another_tenants_store(
    api: MemberApi, unique_id: str, store_id: str
) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-002", f"o-{unique_id}")
    code = await code_for(api, mall.mall_id, member_id)

    by_code_status = await refused(
        api.members.IdentifyMember(by_code(mall.mall_id, store_id, code), metadata=mall.coffee)
    )
    by_identity_status = await refused(
        api.members.IdentifyMember(
            by_openid(mall.mall_id, store_id, f"o-{unique_id}"), metadata=mall.coffee
        )
    )

    assert by_code_status == (grpc.StatusCode.PERMISSION_DENIED, "store_not_yours")
    assert by_identity_status == (grpc.StatusCode.PERMISSION_DENIED, "store_not_yours")


async def test_a_tenant_credential_cannot_browse_members(api: MemberApi, unique_id: str) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")

    status, reason = await refused(
        api.members.GetMember(
            member_service_pb2.GetMemberRequest(mall_id=mall.mall_id, member_id=member_id),
            metadata=mall.coffee,
        )
    )

    assert (status, reason) == (grpc.StatusCode.PERMISSION_DENIED, "rpc_not_for_tenants")


# -- checkout codes -------------------------------------------------------------------------


async def test_a_checkout_code_identifies_the_member_once(api: MemberApi, unique_id: str) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-002", f"o-{unique_id}")
    asked_at = datetime.now(UTC)
    issued = await api.members.IssueCheckoutCode(
        member_service_pb2.IssueCheckoutCodeRequest(mall_id=mall.mall_id, member_id=member_id),
        timeout=10,
    )
    answered_at = datetime.now(UTC)

    identified = await api.members.IdentifyMember(
        by_code(mall.mall_id, "coffee-l1", issued.code), metadata=mall.coffee
    )
    reused = await refused(
        api.members.IdentifyMember(
            by_code(mall.mall_id, "coffee-l1", issued.code), metadata=mall.coffee
        )
    )

    assert len(issued.code) == CODE_DIGITS
    # Valid for the 60 s TTL from when it was issued (however slow this machine is).
    expires_at = issued.expires_at.ToDatetime(tzinfo=UTC)
    ttl, slack = timedelta(seconds=60), timedelta(seconds=1)
    assert asked_at + ttl - slack <= expires_at <= answered_at + ttl + slack
    assert identified.member.member_id == member_id
    assert identified.tier.tier_code == identified.member.tier_code != ""
    assert reused == (grpc.StatusCode.FAILED_PRECONDITION, "checkout_code_used")


async def test_each_request_gets_a_new_code(api: MemberApi, unique_id: str) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")

    first, second = [await code_for(api, mall.mall_id, member_id) for _ in range(2)]

    assert first != second
    for code in (first, second):
        found = await api.members.IdentifyMember(
            by_code(mall.mall_id, "coffee-l1", code), metadata=mall.coffee
        )
        assert found.member.member_id == member_id


async def test_concurrent_scans_of_one_code_identify_once(api: MemberApi, unique_id: str) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")
    code = await code_for(api, mall.mall_id, member_id)

    outcomes = await asyncio.gather(
        *[
            api.members.IdentifyMember(
                by_code(mall.mall_id, "coffee-l1", code), metadata=mall.coffee
            )
            for _ in range(5)
        ],
        return_exceptions=True,
    )

    assert sum(isinstance(o, member_service_pb2.IdentifyMemberResponse) for o in outcomes) == 1


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("0" * CODE_DIGITS, (grpc.StatusCode.NOT_FOUND, "checkout_code_unknown")),
        ("12345", (grpc.StatusCode.INVALID_ARGUMENT, "invalid_checkout_code")),
    ],
)
async def test_an_unknown_code_is_refused(
    api: MemberApi, unique_id: str, code: str, expected: tuple[grpc.StatusCode, str]
) -> None:
    mall = await onboard(api, unique_id)

    outcome = await refused(
        api.members.IdentifyMember(by_code(mall.mall_id, "coffee-l1", code), metadata=mall.coffee)
    )

    assert outcome == expected


async def test_a_code_of_one_mall_means_nothing_in_another(api: MemberApi, unique_id: str) -> None:
    mall = await onboard(api, unique_id)
    other = await onboard(api, f"{unique_id}-b")
    member_id = await pay_with_wechat(api, other, "SHOP-001", f"o-{unique_id}")
    code = await code_for(api, other.mall_id, member_id)

    outcome = await refused(
        api.members.IdentifyMember(by_code(mall.mall_id, "coffee-l1", code), metadata=mall.coffee)
    )

    assert outcome == (grpc.StatusCode.NOT_FOUND, "checkout_code_unknown")


async def test_a_code_for_an_unknown_member_is_not_issued(api: MemberApi, unique_id: str) -> None:
    mall = await onboard(api, unique_id)

    outcome = await refused(code_for(api, mall.mall_id, str(uuid.uuid4())))

    assert outcome == (grpc.StatusCode.NOT_FOUND, "member_not_found")


async def test_an_expired_code_is_refused(
    api: MemberApi, database: str, nats_url: str, unique_id: str
) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")
    async with serve(settings_for(database, nats_url, checkout_code_ttl_s=0.2)) as short_lived:
        code = await code_for(short_lived, mall.mall_id, member_id)
        await asyncio.sleep(0.4)

        outcome = await refused(
            short_lived.members.IdentifyMember(
                by_code(mall.mall_id, "coffee-l1", code), metadata=mall.coffee
            )
        )

    assert outcome == (grpc.StatusCode.FAILED_PRECONDITION, "checkout_code_expired")


# -- identity lookups: only after a payment at the tenant's own store -----------------------


async def test_an_identity_is_visible_only_after_a_payment_at_the_tenants_store(
    api: MemberApi, unique_id: str
) -> None:
    mall = await onboard(api, unique_id)
    openid = f"o-{unique_id}"
    member_id = await pay_with_wechat(api, mall, "SHOP-002", openid)  # at books, not coffee

    before = await refused(
        api.members.IdentifyMember(
            by_openid(mall.mall_id, "coffee-l1", openid), metadata=mall.coffee
        )
    )
    at_books = await api.members.IdentifyMember(
        by_openid(mall.mall_id, "books-l2", openid), metadata=mall.books
    )
    await api.members.ReportPayment(
        receipt(mall, member_id=member_id, receipt_no="R-1"), metadata=mall.coffee
    )
    after = await api.members.IdentifyMember(
        by_openid(mall.mall_id, "coffee-l1", openid), metadata=mall.coffee
    )

    assert before == (grpc.StatusCode.PERMISSION_DENIED, "member_not_visible")
    assert at_books.member.member_id == member_id
    assert after.member.member_id == member_id


async def test_an_unknown_identity_looks_like_an_invisible_one(
    api: MemberApi, unique_id: str
) -> None:
    mall = await onboard(api, unique_id)

    outcome = await refused(
        api.members.IdentifyMember(
            by_openid(mall.mall_id, "coffee-l1", f"nobody-{unique_id}"), metadata=mall.coffee
        )
    )

    assert outcome == (grpc.StatusCode.PERMISSION_DENIED, "member_not_visible")


# -- POS-reported payments ------------------------------------------------------------------


async def attributed(database_url: str, mall_id: str) -> list[events_pb2.PaymentAttributed]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT payload FROM outbox
                WHERE mall_id = $1 AND subject = 'member.payment.attributed' ORDER BY seq""",
            mall_id,
        )
    finally:
        await conn.close()
    return [events_pb2.PaymentAttributed.FromString(r["payload"]) for r in rows]


async def test_the_same_receipt_twice_is_one_payment(api: MemberApi, unique_id: str) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-002", f"o-{unique_id}")
    request = receipt(
        mall, member_id=member_id, receipt_no="R-0042", source=common_pb2.PAYMENT_SOURCE_POS_CARD
    )

    first = await api.members.ReportPayment(request, metadata=mall.coffee)
    second = await api.members.ReportPayment(request, metadata=mall.coffee)

    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.transaction_id == second.transaction_id == "pos:coffee-l1:R-0042"
    conn = await asyncpg.connect(api.database_url)
    try:
        rows = await conn.fetch(
            "SELECT * FROM payments WHERE mall_id = $1 AND transaction_id = $2",
            mall.mall_id,
            first.transaction_id,
        )
    finally:
        await conn.close()
    assert len(rows) == 1
    assert (rows[0]["tenant_id"], rows[0]["amount_fen"], rows[0]["source"]) == (
        "coffee",
        3_500,
        "pos_card",
    )
    pos_events = [e for e in await attributed(api.database_url, mall.mall_id) if e.receipt_no]
    assert len(pos_events) == 1
    [event] = pos_events
    assert event.transaction_id == first.transaction_id
    assert event.source == common_pb2.PAYMENT_SOURCE_POS_CARD
    assert (event.appid, event.openid) == ("", "")
    assert (event.member_id, event.tenant_id, event.store_id) == (member_id, "coffee", "coffee-l1")
    assert (event.amount_fen, event.receipt_no) == (3_500, "R-0042")


async def test_concurrent_reports_of_one_receipt_record_it_once(
    api: MemberApi, unique_id: str
) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")
    request = receipt(mall, member_id=member_id, receipt_no="R-7")

    answers = await asyncio.gather(
        *[api.members.ReportPayment(request, metadata=mall.coffee) for _ in range(5)]
    )

    assert sorted(a.duplicate for a in answers) == [False, True, True, True, True]
    assert len([e for e in await attributed(api.database_url, mall.mall_id) if e.receipt_no]) == 1


async def test_a_receipt_reported_again_with_another_amount_is_a_conflict(
    api: MemberApi, unique_id: str
) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")
    await api.members.ReportPayment(
        receipt(mall, member_id=member_id, receipt_no="R-1"), metadata=mall.coffee
    )

    outcome = await refused(
        api.members.ReportPayment(
            receipt(mall, member_id=member_id, receipt_no="R-1", amount_fen=9_999),
            metadata=mall.coffee,
        )
    )

    assert outcome == (grpc.StatusCode.FAILED_PRECONDITION, "receipt_conflict")


async def test_the_same_receipt_number_at_two_stores_is_two_payments(
    api: MemberApi, unique_id: str
) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")

    at_coffee = await api.members.ReportPayment(
        receipt(mall, member_id=member_id, receipt_no="R-1"), metadata=mall.coffee
    )
    at_books = await api.members.ReportPayment(
        receipt(mall, member_id=member_id, receipt_no="R-1", store_id="books-l2"),
        metadata=mall.books,
    )

    assert not at_coffee.duplicate
    assert not at_books.duplicate
    assert at_coffee.transaction_id != at_books.transaction_id


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"amount_fen": 0}, (grpc.StatusCode.INVALID_ARGUMENT, "amount_not_positive")),
        ({"receipt_no": ""}, (grpc.StatusCode.INVALID_ARGUMENT, "missing_field")),
        ({"receipt_no": "has space"}, (grpc.StatusCode.INVALID_ARGUMENT, "invalid_receipt_no")),
        (
            {"source": common_pb2.PAYMENT_SOURCE_WECHAT_PAY},
            (grpc.StatusCode.INVALID_ARGUMENT, "invalid_source"),
        ),
        (
            {"paid_at": timestamp(datetime.now(UTC) + timedelta(hours=1))},
            (grpc.StatusCode.INVALID_ARGUMENT, "paid_at_in_future"),
        ),
        ({"member_id": str(uuid.uuid4())}, (grpc.StatusCode.NOT_FOUND, "member_not_found")),
        ({"store_id": "books-l2"}, (grpc.StatusCode.PERMISSION_DENIED, "store_not_yours")),
    ],
)
async def test_a_bad_report_is_refused_and_changes_nothing(
    api: MemberApi,
    unique_id: str,
    overrides: dict[str, Any],
    expected: tuple[grpc.StatusCode, str],
) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")

    outcome = await refused(
        api.members.ReportPayment(
            receipt(mall, **({"member_id": member_id, "receipt_no": "R-9"} | overrides)),
            metadata=mall.coffee,
        )
    )

    assert outcome == expected
    assert [e for e in await attributed(api.database_url, mall.mall_id) if e.receipt_no] == []


async def test_a_report_without_paid_at_is_refused(api: MemberApi, unique_id: str) -> None:
    mall = await onboard(api, unique_id)
    member_id = await pay_with_wechat(api, mall, "SHOP-001", f"o-{unique_id}")
    request = receipt(mall, member_id=member_id, receipt_no="R-1")
    request.ClearField("paid_at")

    outcome = await refused(api.members.ReportPayment(request, metadata=mall.coffee))

    assert outcome == (grpc.StatusCode.INVALID_ARGUMENT, "missing_field")
