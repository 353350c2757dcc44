"""The real member service over gRPC: status codes, stable error codes, tenancy."""

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
from mall.member.v1 import member_pb2, member_service_pb2, member_service_pb2_grpc
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS, bootstrap
from member.config import Settings
from member.domain.model import CapturedPayment
from member.service_layer.payments import attribute_payments


@dataclass(frozen=True)
class MemberApi:
    database_url: str
    directory: member_service_pb2_grpc.DirectoryServiceAsyncStub
    members: member_service_pb2_grpc.MemberServiceAsyncStub


@pytest.fixture(scope="module")
async def api(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[MemberApi]:
    url = await fresh_database("member")
    await migrate(url, MIGRATIONS)
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    async with (
        bootstrap(settings) as roles,
        serving(roles) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        yield MemberApi(
            url,
            member_service_pb2_grpc.DirectoryServiceStub(channel),
            member_service_pb2_grpc.MemberServiceStub(channel),
        )


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """The status and stable error code of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return caught.value.code(), error.code


def create_mall_request(tag: str, **overrides: str) -> member_service_pb2.CreateMallRequest:
    fields = {
        "mall_id": f"mall-{tag}",
        "name": f"Mall {tag}",
        "appid": f"wx{tag}",
        "brand_id": "brand",
        "mchid": "1900000109",
        "time_zone": "Asia/Shanghai",
    }
    return member_service_pb2.CreateMallRequest(**(fields | overrides))


async def onboard(api: MemberApi, tag: str) -> tuple[str, str, str]:
    """A mall with one store, created through the API as ops would; (mall, appid, shop)."""
    request = create_mall_request(tag)
    await api.directory.CreateMall(request, timeout=10)
    await api.directory.CreateTenant(
        member_service_pb2.CreateTenantRequest(
            mall_id=request.mall_id, tenant_id="coffee", name="Coffee", category="food"
        ),
        timeout=10,
    )
    await api.directory.CreateStore(
        member_service_pb2.CreateStoreRequest(
            mall_id=request.mall_id,
            tenant_id="coffee",
            store_id="coffee-l1",
            name="Coffee L1",
            mchid="1900000109",
            shop_number="SHOP-001",
        ),
        timeout=10,
    )
    return request.mall_id, request.appid, "SHOP-001"


async def pay(api: MemberApi, appid: str, shop_number: str, openid: str) -> str:
    """A captured payment attributed in member's database; the member id it went to."""
    payment = CapturedPayment(
        event_id=str(uuid.uuid4()),
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        appid=appid,
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


def by_openid(mall_id: str, openid: str) -> member_service_pb2.GetMemberByIdentityRequest:
    return member_service_pb2.GetMemberByIdentityRequest(
        mall_id=mall_id,
        identity=member_pb2.Identity(identity_type=member_pb2.IDENTITY_TYPE_OPENID, value=openid),
    )


# -- directory ------------------------------------------------------------------------------


async def test_create_mall_then_get_it(api: MemberApi, unique_id: str) -> None:
    request = create_mall_request(unique_id, time_zone="")

    created = await api.directory.CreateMall(request, timeout=10)
    fetched = await api.directory.GetMall(
        member_service_pb2.GetMallRequest(mall_id=request.mall_id), timeout=10
    )

    assert created.mall.mall_id == request.mall_id
    assert created.mall.time_zone == "Asia/Shanghai"
    assert created.mall.HasField("created_at")
    assert fetched.mall == created.mall


async def test_create_mall_twice_answers_the_same_mall(api: MemberApi, unique_id: str) -> None:
    first = await api.directory.CreateMall(create_mall_request(unique_id), timeout=10)

    again = await api.directory.CreateMall(create_mall_request(unique_id), timeout=10)

    assert again.mall == first.mall


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"mall_id": "Bad_Mall"}, "invalid_mall_id"),
        ({"mall_id": ""}, "invalid_mall_id"),
        ({"time_zone": "Mars/Olympus_Mons"}, "invalid_time_zone"),
        ({"appid": ""}, "missing_field"),
    ],
)
async def test_create_mall_with_bad_input_is_invalid_argument(
    api: MemberApi, unique_id: str, overrides: dict[str, str], code: str
) -> None:
    request = create_mall_request(unique_id, **overrides)

    status, reason = await refused(api.directory.CreateMall(request, timeout=10))

    assert (status, reason) == (grpc.StatusCode.INVALID_ARGUMENT, code)
    if request.mall_id:
        status, reason = await refused(
            api.directory.GetMall(
                member_service_pb2.GetMallRequest(mall_id=request.mall_id), timeout=10
            )
        )
        assert (status, reason) == (grpc.StatusCode.NOT_FOUND, "unknown_mall")


async def test_create_mall_with_a_taken_appid_fails_precondition(
    api: MemberApi, unique_id: str
) -> None:
    await api.directory.CreateMall(create_mall_request(unique_id), timeout=10)

    status, reason = await refused(
        api.directory.CreateMall(
            create_mall_request(unique_id, mall_id=f"other-{unique_id}"), timeout=10
        )
    )

    assert (status, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "mall_exists")


async def test_create_store_for_an_unknown_tenant_is_not_found(
    api: MemberApi, unique_id: str
) -> None:
    mall_id, _, _ = await onboard(api, unique_id)

    status, reason = await refused(
        api.directory.CreateStore(
            member_service_pb2.CreateStoreRequest(
                mall_id=mall_id,
                tenant_id="no-such-tenant",
                store_id="s-1",
                name="S",
                shop_number="SHOP-009",
            ),
            timeout=10,
        )
    )

    assert (status, reason) == (grpc.StatusCode.NOT_FOUND, "unknown_tenant")


async def test_create_store_with_a_taken_shop_number_fails_precondition(
    api: MemberApi, unique_id: str
) -> None:
    mall_id, _, shop_number = await onboard(api, unique_id)

    status, reason = await refused(
        api.directory.CreateStore(
            member_service_pb2.CreateStoreRequest(
                mall_id=mall_id,
                tenant_id="coffee",
                store_id="coffee-l2",
                name="Coffee L2",
                shop_number=shop_number,
            ),
            timeout=10,
        )
    )

    assert (status, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "shop_number_taken")


async def test_list_malls_includes_a_new_mall(api: MemberApi, unique_id: str) -> None:
    mall_id, _, _ = await onboard(api, unique_id)

    listed = await api.directory.ListMalls(member_service_pb2.ListMallsRequest(), timeout=10)

    assert mall_id in [m.mall_id for m in listed.malls]


# -- members --------------------------------------------------------------------------------


async def test_a_paying_shopper_is_found_by_openid(api: MemberApi, unique_id: str) -> None:
    mall_id, appid, shop_number = await onboard(api, unique_id)
    openid = f"o-{unique_id}"
    member_id = await pay(api, appid, shop_number, openid)

    found = await api.members.GetMemberByIdentity(by_openid(mall_id, openid), timeout=10)
    by_id = await api.members.GetMember(
        member_service_pb2.GetMemberRequest(mall_id=mall_id, member_id=member_id), timeout=10
    )

    assert found.member.member_id == member_id
    assert found.member.mall_id == mall_id
    assert found.member.tier_code == "basic"
    assert found.member.status == member_pb2.MEMBER_STATUS_ACTIVE
    assert by_id.member == found.member


async def test_an_unknown_openid_is_not_found(api: MemberApi, unique_id: str) -> None:
    mall_id, _, _ = await onboard(api, unique_id)

    status, reason = await refused(
        api.members.GetMemberByIdentity(by_openid(mall_id, f"o-nobody-{unique_id}"), timeout=10)
    )

    assert (status, reason) == (grpc.StatusCode.NOT_FOUND, "member_not_found")


async def test_members_of_one_mall_are_invisible_from_another(
    api: MemberApi, unique_id: str
) -> None:
    mall_a, appid_a, shop_a = await onboard(api, f"{unique_id}-a")
    mall_b, _, _ = await onboard(api, f"{unique_id}-b")
    openid = f"o-{unique_id}"
    member_id = await pay(api, appid_a, shop_a, openid)

    found = await api.members.GetMemberByIdentity(by_openid(mall_a, openid), timeout=10)
    by_identity = await refused(
        api.members.GetMemberByIdentity(by_openid(mall_b, openid), timeout=10)
    )
    by_id = await refused(
        api.members.GetMember(
            member_service_pb2.GetMemberRequest(mall_id=mall_b, member_id=member_id), timeout=10
        )
    )

    assert found.member.member_id == member_id
    assert by_identity == (grpc.StatusCode.NOT_FOUND, "member_not_found")
    assert by_id == (grpc.StatusCode.NOT_FOUND, "member_not_found")


async def test_get_member_needs_a_mall(api: MemberApi) -> None:
    status, reason = await refused(
        api.members.GetMember(
            member_service_pb2.GetMemberRequest(member_id=str(uuid.uuid4())), timeout=10
        )
    )

    assert (status, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "missing_field")


async def test_get_member_with_a_malformed_id_is_a_clear_refusal(
    api: MemberApi, unique_id: str
) -> None:
    """Garbage in gets a stable client error, never INTERNAL (which of the two is open)."""
    mall_id, _, _ = await onboard(api, unique_id)

    status, reason = await refused(
        api.members.GetMember(
            member_service_pb2.GetMemberRequest(mall_id=mall_id, member_id="not-a-uuid"),
            timeout=10,
        )
    )

    assert (status, reason) in {
        (grpc.StatusCode.NOT_FOUND, "member_not_found"),
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid_member_id"),
    }


async def test_an_identity_without_a_type_is_invalid(api: MemberApi, unique_id: str) -> None:
    request = member_service_pb2.GetMemberByIdentityRequest(
        mall_id=f"mall-{unique_id}", identity=member_pb2.Identity(value="o-someone")
    )

    status, reason = await refused(api.members.GetMemberByIdentity(request, timeout=10))

    assert (status, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_identity_type")
