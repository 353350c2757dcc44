"""MemberService RPCs the gateway calls for the signed-in shopper's own receipts and guides:
ListMemberPayments, ListMemberGuides, ListStoreGuides."""

from __future__ import annotations

from typing import Any

import asyncpg
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.member.v1 import member_service_pb2

from member.entrypoints.grpc_guides import guide_message
from member.service_layer import receipts

_SOURCES = {
    "wechat_pay": common_pb2.PAYMENT_SOURCE_WECHAT_PAY,
    "pos_cash": common_pb2.PAYMENT_SOURCE_POS_CASH,
    "pos_card": common_pb2.PAYMENT_SOURCE_POS_CARD,
    "pos_other": common_pb2.PAYMENT_SOURCE_POS_OTHER,
    "receipt": common_pb2.PAYMENT_SOURCE_RECEIPT,
}


class ReceiptRpcs:
    """Mixed into MemberServicer (which provides ``_pool``)."""

    _pool: asyncpg.Pool

    async def ListMemberPayments(
        self, request: member_service_pb2.ListMemberPaymentsRequest, context: Any
    ) -> member_service_pb2.ListMemberPaymentsResponse:
        async with self._pool.acquire() as conn:
            page, token = await receipts.list_member_payments(
                conn,
                mall_id=request.mall_id,
                member_id=request.member_id,
                page_size=request.page.page_size,
                token=request.page.page_token,
                transaction_id=request.transaction_id,
            )
        return member_service_pb2.ListMemberPaymentsResponse(
            payments=[
                member_service_pb2.MemberPayment(
                    transaction_id=p.transaction_id,
                    tenant_id=p.tenant_id,
                    store_id=p.store_id,
                    amount_fen=p.amount_fen,
                    refunded_fen=p.refunded_fen,
                    source=_SOURCES.get(p.source.value, common_pb2.PAYMENT_SOURCE_UNSPECIFIED),
                    paid_at=timestamp(p.paid_at),
                )
                for p in page
            ],
            page=common_pb2.PageResponse(next_page_token=token),
        )

    async def ListMemberGuides(
        self, request: member_service_pb2.ListMemberGuidesRequest, context: Any
    ) -> member_service_pb2.ListMemberGuidesResponse:
        async with self._pool.acquire() as conn:
            bound = await receipts.list_member_guides(
                conn, mall_id=request.mall_id, member_id=request.member_id
            )
        return member_service_pb2.ListMemberGuidesResponse(
            guides=[
                member_service_pb2.MemberGuide(guide=guide_message(g), bound_at=timestamp(at))
                for g, at in bound
            ]
        )

    async def ListStoreGuides(
        self, request: member_service_pb2.ListStoreGuidesRequest, context: Any
    ) -> member_service_pb2.ListStoreGuidesResponse:
        async with self._pool.acquire() as conn:
            found = await receipts.list_store_guides(
                conn, mall_id=request.mall_id, store_id=request.store_id
            )
        return member_service_pb2.ListStoreGuidesResponse(guides=[guide_message(g) for g in found])
