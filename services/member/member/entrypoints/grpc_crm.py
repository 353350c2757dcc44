"""CrmService: the mall CRM's open API (CRM credential, see entrypoints/auth)."""

from __future__ import annotations

from typing import Any

import asyncpg
from mall.common.v1 import common_pb2
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc

from member.domain.tag_rules import TagRule
from member.entrypoints.auth import crm_caller
from member.entrypoints.member_messages import profile_message
from member.service_layer import tag_rules, tags


def rule_message(r: TagRule) -> member_service_pb2.TagRule:
    return member_service_pb2.TagRule(
        tag=r.tag,
        tenant_category=r.tenant_category,
        window_days=r.window_days,
        min_spend_fen=r.min_spend_fen,
    )


class CrmServicer(member_service_pb2_grpc.CrmServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ExportMembers(
        self, request: member_service_pb2.ExportMembersRequest, context: Any
    ) -> member_service_pb2.ExportMembersResponse:
        crm_caller(request.mall_id)
        async with self._pool.acquire() as conn:
            page, cursor = await tags.list_members(
                conn,
                request.mall_id,
                page_size=request.page.page_size,
                page_token=request.page.page_token,
                tag=request.tag,
            )
        return member_service_pb2.ExportMembersResponse(
            members=[profile_message(m) for m in page],
            page=common_pb2.PageResponse(next_page_token=cursor),
        )

    async def UpdateMemberTags(
        self, request: member_service_pb2.UpdateMemberTagsRequest, context: Any
    ) -> member_service_pb2.UpdateMemberTagsResponse:
        crm_caller(request.mall_id)
        async with self._pool.acquire() as conn, conn.transaction():
            found = await tag_rules.update_member_tags(
                conn,
                request.mall_id,
                request.member_id,
                list(request.add_tags),
                list(request.remove_tags),
            )
        return member_service_pb2.UpdateMemberTagsResponse(member=profile_message(found))

    async def PutTagRule(
        self, request: member_service_pb2.PutTagRuleRequest, context: Any
    ) -> member_service_pb2.PutTagRuleResponse:
        crm_caller(request.mall_id)
        rule = TagRule(
            tag=request.rule.tag,
            tenant_category=request.rule.tenant_category,
            window_days=request.rule.window_days,
            min_spend_fen=request.rule.min_spend_fen,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            tagged = await tag_rules.put_rule(conn, request.mall_id, rule)
        return member_service_pb2.PutTagRuleResponse(rule=rule_message(rule), tagged_members=tagged)

    async def ListTagRules(
        self, request: member_service_pb2.ListTagRulesRequest, context: Any
    ) -> member_service_pb2.ListTagRulesResponse:
        crm_caller(request.mall_id)
        async with self._pool.acquire() as conn:
            rules = await tag_rules.list_rules(conn, request.mall_id)
        return member_service_pb2.ListTagRulesResponse(rules=[rule_message(r) for r in rules])

    async def DeleteTagRule(
        self, request: member_service_pb2.DeleteTagRuleRequest, context: Any
    ) -> member_service_pb2.DeleteTagRuleResponse:
        crm_caller(request.mall_id)
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await tag_rules.delete_rule(conn, request.mall_id, request.tag)
        return member_service_pb2.DeleteTagRuleResponse(deleted=deleted)
