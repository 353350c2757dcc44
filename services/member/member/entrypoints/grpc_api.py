"""gRPC servicers: translate requests to service-layer calls and results to messages."""

from __future__ import annotations

from typing import Any

import asyncpg
from kit.errors import InvalidInput, NotFound
from mall.member.v1 import directory_pb2, member_pb2, member_service_pb2, member_service_pb2_grpc

from member.adapters import repository
from member.adapters.events import mall_message
from member.domain.model import Member
from member.service_layer import directory

_IDENTITY_KINDS = {
    member_pb2.IDENTITY_TYPE_OPENID: "openid",
    member_pb2.IDENTITY_TYPE_UNIONID: "unionid",
    member_pb2.IDENTITY_TYPE_PHONE: "phone",
    member_pb2.IDENTITY_TYPE_CARD: "card",
    member_pb2.IDENTITY_TYPE_APP_ACCOUNT: "app_account",
}


def _member(m: Member) -> member_pb2.Member:
    return member_pb2.Member(
        member_id=m.member_id,
        mall_id=m.mall_id,
        tier_code=m.tier_code,
        status=member_pb2.MEMBER_STATUS_ACTIVE,
    )


def _required(**fields: str) -> None:
    missing = [name for name, value in fields.items() if not value]
    if missing:
        raise InvalidInput("missing_field", f"required: {', '.join(missing)}")


class MemberServicer(member_service_pb2_grpc.MemberServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def GetMember(
        self, request: member_service_pb2.GetMemberRequest, context: Any
    ) -> member_service_pb2.GetMemberResponse:
        _required(mall_id=request.mall_id, member_id=request.member_id)
        async with self._pool.acquire() as conn:
            found = await repository.get_member(conn, request.mall_id, request.member_id)
        if found is None:
            raise NotFound("member_not_found", "no such member in this mall")
        return member_service_pb2.GetMemberResponse(member=_member(found))

    async def GetMemberByIdentity(
        self, request: member_service_pb2.GetMemberByIdentityRequest, context: Any
    ) -> member_service_pb2.GetMemberByIdentityResponse:
        _required(mall_id=request.mall_id, identity=request.identity.value)
        kind = _IDENTITY_KINDS.get(request.identity.identity_type)
        if kind is None:
            raise InvalidInput("invalid_identity_type", "identity_type is required")
        async with self._pool.acquire() as conn:
            found = await repository.member_by_identity(
                conn, request.mall_id, kind, request.identity.value
            )
        if found is None:
            raise NotFound("member_not_found", "no member with that identity in this mall")
        return member_service_pb2.GetMemberByIdentityResponse(member=_member(found))


class DirectoryServicer(member_service_pb2_grpc.DirectoryServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def CreateMall(
        self, request: member_service_pb2.CreateMallRequest, context: Any
    ) -> member_service_pb2.CreateMallResponse:
        async with self._pool.acquire() as conn, conn.transaction():
            mall = await directory.create_mall(
                conn,
                mall_id=request.mall_id,
                name=request.name,
                appid=request.appid,
                brand_id=request.brand_id,
                mchid=request.mchid,
                time_zone=request.time_zone,
            )
        return member_service_pb2.CreateMallResponse(mall=mall_message(mall))

    async def GetMall(
        self, request: member_service_pb2.GetMallRequest, context: Any
    ) -> member_service_pb2.GetMallResponse:
        async with self._pool.acquire() as conn:
            mall = await repository.get_mall(conn, request.mall_id)
        if mall is None:
            raise NotFound("unknown_mall", f"no mall {request.mall_id}")
        return member_service_pb2.GetMallResponse(mall=mall_message(mall))

    async def ListMalls(
        self, request: member_service_pb2.ListMallsRequest, context: Any
    ) -> member_service_pb2.ListMallsResponse:
        async with self._pool.acquire() as conn:
            malls = await repository.list_malls(conn)
        return member_service_pb2.ListMallsResponse(malls=[mall_message(m) for m in malls])

    async def CreateTenant(
        self, request: member_service_pb2.CreateTenantRequest, context: Any
    ) -> member_service_pb2.CreateTenantResponse:
        async with self._pool.acquire() as conn, conn.transaction():
            await directory.create_tenant(
                conn,
                mall_id=request.mall_id,
                tenant_id=request.tenant_id,
                name=request.name,
                category=request.category,
            )
        return member_service_pb2.CreateTenantResponse(
            tenant=directory_pb2.Tenant(
                mall_id=request.mall_id,
                tenant_id=request.tenant_id,
                name=request.name,
                category=request.category,
            )
        )

    async def CreateStore(
        self, request: member_service_pb2.CreateStoreRequest, context: Any
    ) -> member_service_pb2.CreateStoreResponse:
        async with self._pool.acquire() as conn, conn.transaction():
            await directory.create_store(
                conn,
                mall_id=request.mall_id,
                tenant_id=request.tenant_id,
                store_id=request.store_id,
                name=request.name,
                mchid=request.mchid,
                sub_mchid=request.sub_mchid,
                shop_number=request.shop_number,
            )
        return member_service_pb2.CreateStoreResponse(
            store=directory_pb2.Store(
                mall_id=request.mall_id,
                tenant_id=request.tenant_id,
                store_id=request.store_id,
                name=request.name,
                mchid=request.mchid,
                sub_mchid=request.sub_mchid,
                shop_number=request.shop_number,
            )
        )
