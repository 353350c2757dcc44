"""gRPC servicer: balances and ledger pages for the gateway and tenants."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from kit.errors import InvalidInput
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.points.v1 import points_pb2, points_service_pb2, points_service_pb2_grpc

from points.adapters import repository

_KINDS = {
    "credit": points_pb2.LEDGER_ENTRY_KIND_CREDIT,
    "reversal": points_pb2.LEDGER_ENTRY_KIND_REVERSAL,
    "redemption": points_pb2.LEDGER_ENTRY_KIND_REDEMPTION,
    "hold": points_pb2.LEDGER_ENTRY_KIND_HOLD,
    "release": points_pb2.LEDGER_ENTRY_KIND_RELEASE,
    "expiry": points_pb2.LEDGER_ENTRY_KIND_EXPIRY,
    "adjustment": points_pb2.LEDGER_ENTRY_KIND_ADJUSTMENT,
}
MAX_PAGE = 100
_MAX_CURSOR = 2**63 - 1  # entry ids are bigint


def _member_key(mall_id: str, member_id: str) -> None:
    if not mall_id:
        raise InvalidInput("missing_field", "mall_id is required")
    try:
        uuid.UUID(member_id)
    except ValueError:
        raise InvalidInput("invalid_member_id", "member_id must be a UUID") from None


def _cursor(token: str) -> int | None:
    if not token:
        return None
    # isdigit() alone lets through "²" (int() refuses it) and non-ASCII digits.
    if not (token.isascii() and token.isdigit()) or int(token) > _MAX_CURSOR:
        raise InvalidInput("invalid_page_token", "page_token is not one this API issued")
    return int(token)


class PointsServicer(points_service_pb2_grpc.PointsServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def GetAccount(
        self, request: points_service_pb2.GetAccountRequest, context: Any
    ) -> points_service_pb2.GetAccountResponse:
        _member_key(request.mall_id, request.member_id)
        async with self._pool.acquire() as conn:
            account = await repository.get_account(conn, request.mall_id, request.member_id)
        message = points_pb2.Account(
            mall_id=account.mall_id,
            member_id=account.member_id,
            balance=account.balance,
            available=account.balance,
            lifetime_earned=account.lifetime_earned,
        )
        if account.updated_at:
            message.updated_at.CopyFrom(timestamp(account.updated_at))
        return points_service_pb2.GetAccountResponse(account=message)

    async def ListLedger(
        self, request: points_service_pb2.ListLedgerRequest, context: Any
    ) -> points_service_pb2.ListLedgerResponse:
        _member_key(request.mall_id, request.member_id)
        size = request.page.page_size or 20
        if not 0 < size <= MAX_PAGE:
            raise InvalidInput("invalid_page_size", f"page_size must be 1..{MAX_PAGE}")
        async with self._pool.acquire() as conn:
            entries = await repository.list_ledger(
                conn,
                request.mall_id,
                request.member_id,
                before=_cursor(request.page.page_token),
                limit=size + 1,
            )
        page, more = entries[:size], len(entries) > size
        return points_service_pb2.ListLedgerResponse(
            entries=[
                points_pb2.LedgerEntry(
                    entry_id=str(e.entry_id),
                    kind=_KINDS[e.kind],
                    points=e.points,
                    balance_after=e.balance_after,
                    transaction_id=e.transaction_id or "",
                    reference=e.reference,
                    description=e.description,
                    created_at=timestamp(e.created_at),
                )
                for e in page
            ],
            page=common_pb2.PageResponse(next_page_token=str(page[-1].entry_id) if more else ""),
        )
