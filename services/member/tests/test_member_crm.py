"""The mall CRM's open API over real gRPC (CRM credential), and tags by rule on real
PostgreSQL and JetStream: set when a payment qualifies, kept off for others, taken off when
the window runs out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import nats
import pytest
from eventbus.consumer import Consumer
from kit.cli import serving
from kit.grpc_errors import from_rpc_error
from kit.migrations import migrate
from mall.common.v1 import common_pb2
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS, bootstrap
from member.config import Settings
from member.domain.model import CapturedPayment
from member.entrypoints.tag_jobs import PAYMENT_ATTRIBUTED, on_payment_attributed
from member.service_layer.payments import attribute_payments
from member.service_layer.tag_rules import evaluate_all

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Api:
    database_url: str
    nats_url: str
    directory: member_service_pb2_grpc.DirectoryServiceAsyncStub
    members: member_service_pb2_grpc.MemberServiceAsyncStub
    crm: member_service_pb2_grpc.CrmServiceAsyncStub


@dataclass(frozen=True)
class Mall:
    mall_id: str
    appid: str
    crm: Metadata
    tenant: Metadata


@pytest.fixture(scope="module")
async def api(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[Api]:
    url = await fresh_database("member")
    await migrate(url, MIGRATIONS)
    settings = Settings(
        database_url=url,
        nats_url=nats_url,
        grpc_port=0,
        log_level="warning",
        credential_cache_s=0.1,
    )
    async with (
        bootstrap(settings) as roles,
        serving(roles, ("serve", "relay")) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        yield Api(
            url,
            nats_url,
            member_service_pb2_grpc.DirectoryServiceStub(channel),
            member_service_pb2_grpc.MemberServiceStub(channel),
            member_service_pb2_grpc.CrmServiceStub(channel),
        )


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return caught.value.code(), error.code


def presented(issued: Any) -> Metadata:
    return (("x-mall-credential", f"{issued.credential.credential_id}.{issued.secret}"),)


async def onboard(api: Api, tag: str) -> Mall:
    mall_id, appid = f"mall-{tag}", f"wx{tag}"
    await api.directory.CreateMall(
        member_service_pb2.CreateMallRequest(mall_id=mall_id, name="Mall", appid=appid),
        timeout=10,
    )
    for tenant, category, shop in (("sports", "sports", "SHOP-1"), ("cafe", "food", "SHOP-2")):
        await api.directory.CreateTenant(
            member_service_pb2.CreateTenantRequest(
                mall_id=mall_id, tenant_id=tenant, name=tenant, category=category
            ),
            timeout=10,
        )
        await api.directory.CreateStore(
            member_service_pb2.CreateStoreRequest(
                mall_id=mall_id,
                tenant_id=tenant,
                store_id=f"{tenant}-l1",
                name=tenant,
                shop_number=shop,
            ),
            timeout=10,
        )
    crm = await api.directory.IssueCredential(
        member_service_pb2.IssueCredentialRequest(mall_id=mall_id, crm=True, label="CRM"),
        timeout=10,
    )
    assert crm.credential.crm
    pos = await api.directory.IssueCredential(
        member_service_pb2.IssueCredentialRequest(mall_id=mall_id, tenant_id="sports"),
        timeout=10,
    )
    return Mall(mall_id, appid, presented(crm), presented(pos))


@pytest.fixture
async def mall(api: Api, unique_id: str) -> Mall:
    return await onboard(api, unique_id)


async def pay(
    api: Api, mall: Mall, shop: str, openid: str, amount_fen: int, paid_at: datetime | None = None
) -> str:
    payment = CapturedPayment(
        event_id=str(uuid.uuid4()),
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        appid=mall.appid,
        mchid="1900000109",
        shop_number=shop,
        openid=openid,
        amount_fen=amount_fen,
        paid_at=paid_at or datetime.now(UTC),
    )
    conn = await asyncpg.connect(api.database_url)
    try:
        async with conn.transaction():
            [done] = await attribute_payments(conn, [(payment, {})])
    finally:
        await conn.close()
    return done.member.member_id


def rule(mall: Mall, tag: str = "sporty", days: int = 30, min_fen: int = 10_000) -> Any:
    return member_service_pb2.PutTagRuleRequest(
        mall_id=mall.mall_id,
        rule=member_service_pb2.TagRule(
            tag=tag, tenant_category="sports", window_days=days, min_spend_fen=min_fen
        ),
    )


async def tagged(api: Api, mall: Mall, tag: str) -> list[str]:
    page = await api.crm.ExportMembers(
        member_service_pb2.ExportMembersRequest(mall_id=mall.mall_id, tag=tag),
        metadata=mall.crm,
        timeout=10,
    )
    return [m.member_id for m in page.members]


# -- the CRM credential -----------------------------------------------------------------------


async def test_only_a_crm_credential_of_the_mall_opens_the_crm_api(
    api: Api, unique_id: str
) -> None:
    mine = await onboard(api, f"{unique_id}a")
    other = await onboard(api, f"{unique_id}b")
    export = member_service_pb2.ExportMembersRequest(mall_id=mine.mall_id)

    anonymous = await refused(api.crm.ExportMembers(export, timeout=10))
    tenant = await refused(api.crm.ExportMembers(export, metadata=mine.tenant, timeout=10))
    foreign = await refused(api.crm.ExportMembers(export, metadata=other.crm, timeout=10))
    elsewhere = await refused(
        api.members.GetMember(
            member_service_pb2.GetMemberRequest(mall_id=mine.mall_id, member_id=str(uuid.uuid4())),
            metadata=mine.crm,
            timeout=10,
        )
    )
    allowed = await api.crm.ExportMembers(export, metadata=mine.crm, timeout=10)

    assert anonymous[0] == grpc.StatusCode.UNAUTHENTICATED
    assert tenant == (grpc.StatusCode.PERMISSION_DENIED, "not_a_crm_credential")
    assert foreign == (grpc.StatusCode.PERMISSION_DENIED, "mall_not_yours")
    assert elsewhere[0] == grpc.StatusCode.PERMISSION_DENIED
    assert len(allowed.members) == 0


async def test_the_export_pages_through_every_member_once(api: Api, mall: Mall) -> None:
    shoppers = {await pay(api, mall, "SHOP-2", f"o-exp-{i}", 1_000) for i in range(5)}

    seen: list[str] = []
    token = ""
    while True:
        page = await api.crm.ExportMembers(
            member_service_pb2.ExportMembersRequest(
                mall_id=mall.mall_id, page=common_pb2.PageRequest(page_size=2, page_token=token)
            ),
            metadata=mall.crm,
            timeout=10,
        )
        seen += [m.member_id for m in page.members]
        token = page.page.next_page_token
        if not token:
            break

    assert sorted(seen) == sorted(shoppers)
    assert len(seen) == len(shoppers)


async def test_the_crm_adds_and_removes_manual_tags(api: Api, mall: Mall) -> None:
    shopper = await pay(api, mall, "SHOP-2", "o-tags", 1_000)

    def update(add: list[str], remove: list[str]) -> Any:
        return api.crm.UpdateMemberTags(
            member_service_pb2.UpdateMemberTagsRequest(
                mall_id=mall.mall_id, member_id=shopper, add_tags=add, remove_tags=remove
            ),
            metadata=mall.crm,
            timeout=10,
        )

    first = await update(["vip", "newsletter"], [])
    second = await update(["vip"], ["newsletter"])
    bad = await refused(update(["Not A Slug"], []))

    assert list(first.member.tags) == ["newsletter", "vip"]
    assert list(second.member.tags) == ["vip"]
    assert bad == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_tag")
    assert await tagged(api, mall, "vip") == [shopper]


# -- tags by rule -----------------------------------------------------------------------------


async def test_a_rule_tags_those_who_qualify_at_once_and_stays_off_others(
    api: Api, mall: Mall
) -> None:
    runner = await pay(api, mall, "SHOP-1", "o-runner", 12_000)
    await pay(api, mall, "SHOP-1", "o-browser", 2_000)  # too little
    await pay(api, mall, "SHOP-2", "o-eater", 50_000)  # another category
    await pay(api, mall, "SHOP-1", "o-long-ago", 50_000, datetime.now(UTC) - timedelta(days=40))

    put = await api.crm.PutTagRule(rule(mall), metadata=mall.crm, timeout=10)
    listed = await api.crm.ListTagRules(
        member_service_pb2.ListTagRulesRequest(mall_id=mall.mall_id), metadata=mall.crm
    )

    assert put.tagged_members == 1
    assert await tagged(api, mall, "sporty") == [runner]
    assert [r.tag for r in listed.rules] == ["sporty"]
    invalid = await refused(api.crm.PutTagRule(rule(mall, days=0), metadata=mall.crm))
    assert invalid == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_window")


async def test_a_rule_tag_goes_when_its_window_runs_out_and_with_its_rule(
    api: Api, mall: Mall
) -> None:
    runner = await pay(
        api, mall, "SHOP-1", "o-fading", 20_000, datetime.now(UTC) - timedelta(days=20)
    )
    await api.crm.PutTagRule(rule(mall), metadata=mall.crm, timeout=10)
    assert await tagged(api, mall, "sporty") == [runner]
    conn = await asyncpg.connect(api.database_url)
    try:
        await evaluate_all(conn, datetime.now(UTC) + timedelta(days=5))
        still = await tagged(api, mall, "sporty")
        await evaluate_all(conn, datetime.now(UTC) + timedelta(days=11))
        gone = await tagged(api, mall, "sporty")
    finally:
        await conn.close()
    removed_by_crm = await api.crm.UpdateMemberTags(
        member_service_pb2.UpdateMemberTagsRequest(
            mall_id=mall.mall_id, member_id=runner, remove_tags=["sporty"]
        ),
        metadata=mall.crm,
    )

    assert (still, gone) == ([runner], [])
    assert list(removed_by_crm.member.tags) == []
    await api.crm.PutTagRule(rule(mall, days=30), metadata=mall.crm)
    deleted = await api.crm.DeleteTagRule(
        member_service_pb2.DeleteTagRuleRequest(mall_id=mall.mall_id, tag="sporty"),
        metadata=mall.crm,
    )
    assert deleted.deleted
    assert await tagged(api, mall, "sporty") == []


async def test_a_qualifying_payment_tags_the_payer_through_jetstream(api: Api, mall: Mall) -> None:
    await api.crm.PutTagRule(rule(mall), metadata=mall.crm, timeout=10)
    nc = await nats.connect(api.nats_url)
    pool = await asyncpg.create_pool(api.database_url, min_size=1, max_size=2)
    consumer = Consumer(
        pool,
        nc.jetstream(),
        name=f"member-tag-rules-test-{uuid.uuid4().hex[:8]}",
        stream="MEMBER",
        subject=PAYMENT_ATTRIBUTED,
        handler=on_payment_attributed,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        runner = await pay(api, mall, "SHOP-1", "o-live", 15_000)  # the relay publishes it
        for _ in range(200):
            if await tagged(api, mall, "sporty"):
                break
            await asyncio.sleep(0.05)
        assert await tagged(api, mall, "sporty") == [runner]
    finally:
        stop.set()
        await task
        await nc.jetstream().delete_consumer("MEMBER", consumer.name)
        await nc.close()
        await pool.close()
