"""MemberService RPCs for shopping guides: BindGuide (gateway), RegisterGuide and
ListGuideMembers (tenant POS, see entrypoints/auth)."""

from __future__ import annotations

from typing import Any

import asyncpg
from kit.errors import InvalidInput
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.member.v1 import member_service_pb2

from member.domain.guides import Guide
from member.domain.joining import mask_phone
from member.entrypoints.auth import tenant_caller
from member.service_layer import guides


def guide_message(g: Guide) -> member_service_pb2.Guide:
    return member_service_pb2.Guide(
        mall_id=g.mall_id,
        guide_id=g.guide_id,
        tenant_id=g.tenant_id,
        store_id=g.store_id,
        name=g.name,
    )


class GuideRpcs:
    """Mixed into MemberServicer (which provides ``_pool``)."""

    _pool: asyncpg.Pool

    async def RegisterGuide(
        self, request: member_service_pb2.RegisterGuideRequest, context: Any
    ) -> member_service_pb2.RegisterGuideResponse:
        caller = tenant_caller()
        if not request.mall_id or not request.store_id:
            raise InvalidInput("missing_field", "required: mall_id, store_id")
        async with self._pool.acquire() as conn, conn.transaction():
            guide = await guides.register_guide(
                conn,
                caller,
                mall_id=request.mall_id,
                store_id=request.store_id,
                guide_id=request.guide_id,
                name=request.name,
            )
        return member_service_pb2.RegisterGuideResponse(guide=guide_message(guide))

    async def BindGuide(
        self, request: member_service_pb2.BindGuideRequest, context: Any
    ) -> member_service_pb2.BindGuideResponse:
        async with self._pool.acquire() as conn, conn.transaction():
            guide, bound_at, previous = await guides.bind_guide(
                conn,
                mall_id=request.mall_id,
                member_id=request.member_id,
                guide_id=request.guide_id,
            )
        return member_service_pb2.BindGuideResponse(
            guide=guide_message(guide), bound_at=timestamp(bound_at), previous_guide_id=previous
        )

    async def ListGuideMembers(
        self, request: member_service_pb2.ListGuideMembersRequest, context: Any
    ) -> member_service_pb2.ListGuideMembersResponse:
        caller = tenant_caller()
        async with self._pool.acquire() as conn:
            page, token = await guides.list_guide_members(
                conn,
                caller,
                mall_id=request.mall_id,
                guide_id=request.guide_id,
                page_size=request.page.page_size,
                token=request.page.page_token,
            )
        return member_service_pb2.ListGuideMembersResponse(
            members=[
                member_service_pb2.GuideMember(
                    member_id=m.member_id,
                    tier_code=m.tier_code,
                    phone_masked=mask_phone(m.phone),
                    bound_at=timestamp(m.bound_at),
                )
                for m in page
            ],
            page=common_pb2.PageResponse(next_page_token=token),
        )
