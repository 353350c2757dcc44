"""MemberService RPCs for one member per person: LinkIdentity and MergeMembers."""

from __future__ import annotations

from typing import Any

import asyncpg
from kit.errors import InvalidInput
from kit.proto import timestamp
from mall.member.v1 import member_pb2, member_service_pb2

from member.domain.merges import MergeRequest
from member.entrypoints.member_messages import profile_message
from member.service_layer import merges

IDENTITY_KINDS = {
    member_pb2.IDENTITY_TYPE_OPENID: "openid",
    member_pb2.IDENTITY_TYPE_UNIONID: "unionid",
    member_pb2.IDENTITY_TYPE_PHONE: "phone",
    member_pb2.IDENTITY_TYPE_CARD: "card",
    member_pb2.IDENTITY_TYPE_APP_ACCOUNT: "app_account",
}


class IdentityRpcs:
    """Mixed into MemberServicer (which provides ``_pool``)."""

    _pool: asyncpg.Pool

    async def LinkIdentity(
        self, request: member_service_pb2.LinkIdentityRequest, context: Any
    ) -> member_service_pb2.LinkIdentityResponse:
        kind = IDENTITY_KINDS.get(request.identity.identity_type)
        if kind is None:
            raise InvalidInput("invalid_identity_type", "identity_type is required")
        if not request.mall_id or not request.member_id:
            raise InvalidInput("missing_field", "required: mall_id, member_id")
        async with self._pool.acquire() as conn, conn.transaction():
            found, already = await merges.link_identity(
                conn,
                mall_id=request.mall_id,
                member_id=request.member_id,
                kind=kind,
                value=request.identity.value,
            )
        return member_service_pb2.LinkIdentityResponse(
            member=profile_message(found), already_linked=already
        )

    async def MergeMembers(
        self, request: member_service_pb2.MergeMembersRequest, context: Any
    ) -> member_service_pb2.MergeMembersResponse:
        merge = MergeRequest(
            mall_id=request.mall_id,
            survivor_member_id=request.survivor_member_id,
            merged_member_id=request.merged_member_id,
            merge_request_id=request.merge_request_id,
            operator=request.operator,
            reason=request.reason,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            outcome = await merges.merge_members(conn, merge)
        return member_service_pb2.MergeMembersResponse(
            member=profile_message(outcome.survivor),
            duplicate=outcome.duplicate,
            merged_at=timestamp(outcome.merged_at),
        )
