"""Shopping guides and one-member-per-person over real gRPC: tenants register guides with
their credentials, shoppers bind where they paid, a guide sees only their own members;
LinkIdentity refuses a held identity and MergeMembers answers repeats."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
from kit.cli import serving
from kit.grpc_errors import from_rpc_error
from kit.migrations import migrate
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.member.v1 import events_pb2, member_pb2, member_service_pb2, member_service_pb2_grpc
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS, bootstrap
from member.config import Settings
from member.domain.model import CapturedPayment
from member.service_layer.payments import attribute_payments

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Api:
    database_url: str
    directory: member_service_pb2_grpc.DirectoryServiceAsyncStub
    members: member_service_pb2_grpc.MemberServiceAsyncStub


@dataclass(frozen=True)
class Mall:
    mall_id: str
    appid: str
    sports: Metadata  # tenant "sports": store sports-l1, shop SHOP-001
    books: Metadata  # tenant "books": store books-l2, shop SHOP-002


@pytest.fixture(scope="module")
async def api(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[Api]:
    url = await fresh_database("member")
    await migrate(url, MIGRATIONS)
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    async with (
        bootstrap(settings) as roles,
        serving(roles) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        yield Api(
            url,
            member_service_pb2_grpc.DirectoryServiceStub(channel),
            member_service_pb2_grpc.MemberServiceStub(channel),
        )


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return caught.value.code(), error.code


@pytest.fixture
async def mall(api: Api, unique_id: str) -> Mall:
    mall_id, appid = f"mall-{unique_id}", f"wx{unique_id}"
    await api.directory.CreateMall(
        member_service_pb2.CreateMallRequest(mall_id=mall_id, name="Mall", appid=appid),
        timeout=10,
    )
    creds: list[Metadata] = []
    for tenant, store, shop in (
        ("sports", "sports-l1", "SHOP-001"),
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
        issued = await api.directory.IssueCredential(
            member_service_pb2.IssueCredentialRequest(mall_id=mall_id, tenant_id=tenant),
            timeout=10,
        )
        creds.append((("x-mall-credential", f"{issued.credential.credential_id}.{issued.secret}"),))
    return Mall(mall_id, appid, creds[0], creds[1])


async def pay(api: Api, mall: Mall, shop_number: str, openid: str) -> str:
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


async def register(api: Api, mall: Mall, creds: Metadata, store_id: str, guide_id: str) -> Any:
    return await api.members.RegisterGuide(
        member_service_pb2.RegisterGuideRequest(
            mall_id=mall.mall_id, store_id=store_id, guide_id=guide_id, name=f"Guide {guide_id}"
        ),
        metadata=creds,
        timeout=10,
    )


def bind(mall: Mall, member_id: str, guide_id: str) -> member_service_pb2.BindGuideRequest:
    return member_service_pb2.BindGuideRequest(
        mall_id=mall.mall_id, member_id=member_id, guide_id=guide_id
    )


def listing(mall: Mall, guide_id: str, page_size: int = 0, token: str = "") -> Any:
    return member_service_pb2.ListGuideMembersRequest(
        mall_id=mall.mall_id,
        guide_id=guide_id,
        page=common_pb2.PageRequest(page_size=page_size, page_token=token),
    )


async def outbox(api: Api, mall_id: str, subject: str) -> list[bytes]:
    conn = await asyncpg.connect(api.database_url)
    try:
        rows = await conn.fetch(
            "SELECT payload FROM outbox WHERE mall_id = $1 AND subject = $2 ORDER BY seq",
            mall_id,
            subject,
        )
    finally:
        await conn.close()
    return [r["payload"] for r in rows]


# -- guides -----------------------------------------------------------------------------------


async def test_a_shopper_binds_to_a_guide_where_they_paid_and_the_guide_sees_them(
    api: Api, mall: Mall
) -> None:
    await register(api, mall, mall.sports, "sports-l1", "g-ann")
    shopper = await pay(api, mall, "SHOP-001", "o-runner")

    bound = await api.members.BindGuide(bind(mall, shopper, "g-ann"), timeout=10)
    again = await api.members.BindGuide(bind(mall, shopper, "g-ann"), timeout=10)
    seen = await api.members.ListGuideMembers(
        listing(mall, "g-ann"), metadata=mall.sports, timeout=10
    )

    assert (bound.guide.guide_id, bound.guide.tenant_id, bound.previous_guide_id) == (
        "g-ann",
        "sports",
        "",
    )
    assert again.bound_at == bound.bound_at
    assert [m.member_id for m in seen.members] == [shopper]
    assert seen.members[0].tier_code == "basic"
    [event] = [
        events_pb2.GuideBound.FromString(p)
        for p in await outbox(api, mall.mall_id, "member.guide.bound")
    ]
    assert (event.member_id, event.guide_id, event.store_id) == (shopper, "g-ann", "sports-l1")


async def test_binding_needs_a_payment_at_the_guides_store(api: Api, mall: Mall) -> None:
    await register(api, mall, mall.sports, "sports-l1", "g-bob")
    reader = await pay(api, mall, "SHOP-002", "o-reader")  # paid at books only

    status, code = await refused(api.members.BindGuide(bind(mall, reader, "g-bob"), timeout=10))
    unknown = await refused(api.members.BindGuide(bind(mall, reader, "g-nobody"), timeout=10))

    assert (status, code) == (grpc.StatusCode.FAILED_PRECONDITION, "no_payment_at_store")
    assert unknown == (grpc.StatusCode.NOT_FOUND, "guide_not_found")


async def test_a_new_guide_of_the_same_tenant_replaces_the_old_one(api: Api, mall: Mall) -> None:
    await register(api, mall, mall.sports, "sports-l1", "g-one")
    await register(api, mall, mall.sports, "sports-l1", "g-two")
    shopper = await pay(api, mall, "SHOP-001", "o-switch")
    await api.members.BindGuide(bind(mall, shopper, "g-one"), timeout=10)

    moved = await api.members.BindGuide(bind(mall, shopper, "g-two"), timeout=10)

    assert moved.previous_guide_id == "g-one"
    first = await api.members.ListGuideMembers(listing(mall, "g-one"), metadata=mall.sports)
    second = await api.members.ListGuideMembers(listing(mall, "g-two"), metadata=mall.sports)
    assert (len(first.members), [m.member_id for m in second.members]) == (0, [shopper])


async def test_a_tenant_sees_only_its_own_guides_members(api: Api, mall: Mall) -> None:
    await register(api, mall, mall.sports, "sports-l1", "g-own")

    other = await refused(
        api.members.ListGuideMembers(listing(mall, "g-own"), metadata=mall.books, timeout=10)
    )
    unknown = await refused(
        api.members.ListGuideMembers(listing(mall, "g-none"), metadata=mall.books, timeout=10)
    )
    anonymous = await refused(api.members.ListGuideMembers(listing(mall, "g-own"), timeout=10))
    foreign_store = await refused(register(api, mall, mall.books, "sports-l1", "g-steal"))
    taken = await refused(register(api, mall, mall.books, "books-l2", "g-own"))

    assert other == unknown == (grpc.StatusCode.PERMISSION_DENIED, "guide_not_yours")
    assert anonymous[0] == grpc.StatusCode.UNAUTHENTICATED
    assert foreign_store == (grpc.StatusCode.PERMISSION_DENIED, "store_not_yours")
    assert taken == (grpc.StatusCode.FAILED_PRECONDITION, "guide_id_taken")


async def test_a_guides_members_come_page_by_page(api: Api, mall: Mall) -> None:
    await register(api, mall, mall.sports, "sports-l1", "g-busy")
    shoppers = [await pay(api, mall, "SHOP-001", f"o-page-{i}") for i in range(5)]
    for shopper in shoppers:
        await api.members.BindGuide(bind(mall, shopper, "g-busy"), timeout=10)

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await api.members.ListGuideMembers(
            listing(mall, "g-busy", 2, token), metadata=mall.sports, timeout=10
        )
        seen += [m.member_id for m in page.members]
        pages += 1
        token = page.page.next_page_token
        if not token:
            break

    assert (pages, seen) == (3, shoppers)
    bad = await refused(
        api.members.ListGuideMembers(listing(mall, "g-busy", 2, "nope"), metadata=mall.sports)
    )
    assert bad == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_page_token")


# -- identity over gRPC -----------------------------------------------------------------------


def card(mall: Mall, member_id: str, value: str) -> member_service_pb2.LinkIdentityRequest:
    return member_service_pb2.LinkIdentityRequest(
        mall_id=mall.mall_id,
        member_id=member_id,
        identity=member_pb2.Identity(identity_type=member_pb2.IDENTITY_TYPE_CARD, value=value),
    )


async def test_link_identity_refuses_an_identity_held_by_another_member(
    api: Api, mall: Mall
) -> None:
    first = await pay(api, mall, "SHOP-001", "o-card-1")
    second = await pay(api, mall, "SHOP-001", "o-card-2")

    linked = await api.members.LinkIdentity(card(mall, first, "C-42"), timeout=10)
    repeat = await api.members.LinkIdentity(card(mall, first, "C-42"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.members.LinkIdentity(card(mall, second, "C-42"), timeout=10)

    assert (linked.member.member_id, linked.already_linked, repeat.already_linked) == (
        first,
        False,
        True,
    )
    error = from_rpc_error(caught.value)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error is not None
    assert error.code == "identity_held_by_other_member"


async def test_merge_members_over_grpc_answers_a_repeat_and_then_shows_the_merged_member(
    api: Api, mall: Mall
) -> None:
    survivor = await pay(api, mall, "SHOP-001", "o-m-1")
    merged = await pay(api, mall, "SHOP-002", "o-m-2")
    request = member_service_pb2.MergeMembersRequest(
        mall_id=mall.mall_id,
        survivor_member_id=survivor,
        merged_member_id=merged,
        merge_request_id="desk-ticket-77",
        operator="ops:li",
        reason="same unionid",
    )

    first = await api.members.MergeMembers(request, timeout=10)
    repeat = await api.members.MergeMembers(request, timeout=10)
    gone = await api.members.GetMember(
        member_service_pb2.GetMemberRequest(mall_id=mall.mall_id, member_id=merged), timeout=10
    )
    found = await api.members.GetMemberByIdentity(
        member_service_pb2.GetMemberByIdentityRequest(
            mall_id=mall.mall_id,
            identity=member_pb2.Identity(
                identity_type=member_pb2.IDENTITY_TYPE_OPENID, value="o-m-2"
            ),
        ),
        timeout=10,
    )
    missing = await refused(
        api.members.MergeMembers(
            member_service_pb2.MergeMembersRequest(mall_id=mall.mall_id), timeout=10
        )
    )

    assert (first.duplicate, repeat.duplicate) == (False, True)
    assert first.merged_at == repeat.merged_at
    assert first.member.member_id == survivor
    assert gone.member.status == member_pb2.MEMBER_STATUS_MERGED
    assert gone.member.merged_into_member_id == survivor
    assert found.member.member_id == survivor
    assert missing == (grpc.StatusCode.INVALID_ARGUMENT, "missing_field")


async def test_after_a_merge_the_absorbed_members_id_still_pays_and_binds_the_survivor(
    api: Api, mall: Mall
) -> None:
    await register(api, mall, mall.sports, "sports-l1", "g-merge")
    survivor = await pay(api, mall, "SHOP-002", "o-keep-me")
    merged = await pay(api, mall, "SHOP-001", "o-fold-me")
    await api.members.BindGuide(bind(mall, merged, "g-merge"), timeout=10)
    await api.members.MergeMembers(
        member_service_pb2.MergeMembersRequest(
            mall_id=mall.mall_id,
            survivor_member_id=survivor,
            merged_member_id=merged,
            merge_request_id=f"m-{uuid.uuid4().hex[:8]}",
            operator="ops:wang",
            reason="same phone",
        ),
        timeout=10,
    )

    reported = await api.members.ReportPayment(
        member_service_pb2.ReportPaymentRequest(
            mall_id=mall.mall_id,
            store_id="sports-l1",
            member_id=merged,  # a POS that identified the shopper before the merge
            receipt_no="R-after-merge",
            amount_fen=4_200,
            source=common_pb2.PAYMENT_SOURCE_POS_CASH,
            paid_at=timestamp(datetime.now(UTC)),
        ),
        metadata=mall.sports,
        timeout=10,
    )
    code = await api.members.IssueCheckoutCode(
        member_service_pb2.IssueCheckoutCodeRequest(mall_id=mall.mall_id, member_id=merged),
        timeout=10,
    )
    identified = await api.members.IdentifyMember(
        member_service_pb2.IdentifyMemberRequest(
            mall_id=mall.mall_id, store_id="sports-l1", checkout_code=code.code
        ),
        metadata=mall.sports,
        timeout=10,
    )
    guide_members = await api.members.ListGuideMembers(
        listing(mall, "g-merge"), metadata=mall.sports, timeout=10
    )

    attributed = events_pb2.PaymentAttributed.FromString(
        (await outbox(api, mall.mall_id, "member.payment.attributed"))[-1]
    )
    assert (attributed.transaction_id, attributed.member_id) == (
        reported.transaction_id,
        survivor,
    )
    assert identified.member.member_id == survivor
    assert (identified.tier.tier_code, identified.tier.name) == ("basic", "普通会员")
    assert [b.benefit_code for b in identified.tier.benefits] == ["points_1x"]  # for the POS
    assert [m.member_id for m in guide_members.members] == [survivor]


# -- the shopper's own receipts and guides (gateway) -------------------------------------------


async def test_a_member_lists_their_payments_and_guides_and_nobody_elses(
    api: Api, mall: Mall
) -> None:
    await register(api, mall, mall.sports, "sports-l1", "g-rec")
    await register(api, mall, mall.books, "books-l2", "g-lib")
    shopper = await pay(api, mall, "SHOP-001", "o-receipts")
    await pay(api, mall, "SHOP-002", "o-receipts")
    await pay(api, mall, "SHOP-002", "o-receipts")
    other = await pay(api, mall, "SHOP-001", "o-someone-else")
    await api.members.BindGuide(bind(mall, shopper, "g-rec"), timeout=10)

    def payments(member_id: str, size: int = 0, token: str = "", tx: str = "") -> Any:
        return api.members.ListMemberPayments(
            member_service_pb2.ListMemberPaymentsRequest(
                mall_id=mall.mall_id,
                member_id=member_id,
                page=common_pb2.PageRequest(page_size=size, page_token=token),
                transaction_id=tx,
            ),
            timeout=10,
        )

    everything = await payments(shopper)
    first = await payments(shopper, size=2)
    rest = await payments(shopper, size=2, token=first.page.next_page_token)
    theirs = await payments(other)
    one = await payments(shopper, tx=everything.payments[-1].transaction_id)
    not_mine = await payments(shopper, tx=theirs.payments[0].transaction_id)
    guides = await api.members.ListMemberGuides(
        member_service_pb2.ListMemberGuidesRequest(mall_id=mall.mall_id, member_id=shopper),
        timeout=10,
    )
    none = await api.members.ListMemberGuides(
        member_service_pb2.ListMemberGuidesRequest(mall_id=mall.mall_id, member_id=other),
        timeout=10,
    )
    at_books = await api.members.ListStoreGuides(
        member_service_pb2.ListStoreGuidesRequest(mall_id=mall.mall_id, store_id="books-l2"),
        timeout=10,
    )

    times = [p.paid_at.ToDatetime() for p in everything.payments]
    assert len(everything.payments) == 3
    assert times == sorted(times, reverse=True)
    assert everything.page.next_page_token == ""
    assert [p.transaction_id for p in [*first.payments, *rest.payments]] == [
        p.transaction_id for p in everything.payments
    ]
    assert rest.page.next_page_token == ""
    assert {p.store_id for p in everything.payments} == {"sports-l1", "books-l2"}
    assert all(
        p.amount_fen == 8_800 and p.source == common_pb2.PAYMENT_SOURCE_WECHAT_PAY
        for p in everything.payments
    )
    assert [p.transaction_id for p in one.payments] == [everything.payments[-1].transaction_id]
    assert one.payments[0].tenant_id == "sports"
    assert one.payments[0].refunded_fen == 0
    assert list(not_mine.payments) == []
    assert [(g.guide.guide_id, g.guide.store_id) for g in guides.guides] == [("g-rec", "sports-l1")]
    assert list(none.guides) == []
    assert [(g.guide_id, g.tenant_id) for g in at_books.guides] == [("g-lib", "books")]
    bad = await refused(payments(shopper, token="not-a-token"))
    assert bad == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_page_token")
