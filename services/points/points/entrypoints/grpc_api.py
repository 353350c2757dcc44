"""gRPC servicer: balances, ledger pages, redemptions (hold → confirm / release) and manual
adjustments. Translation only: the rules live in the domain, the use cases in service_layer."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
from kit.errors import InvalidInput
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.points.v1 import points_pb2, points_service_pb2, points_service_pb2_grpc

from points.adapters import repository
from points.adapters.events import REWARD_KINDS
from points.adapters.repository import Account, LedgerEntry
from points.domain.redemption import Adjustment, HoldRequest
from points.service_layer import adjustments, redemptions

_KINDS = {
    "credit": points_pb2.LEDGER_ENTRY_KIND_CREDIT,
    "reversal": points_pb2.LEDGER_ENTRY_KIND_REVERSAL,
    "redemption": points_pb2.LEDGER_ENTRY_KIND_REDEMPTION,
    "hold": points_pb2.LEDGER_ENTRY_KIND_HOLD,
    "release": points_pb2.LEDGER_ENTRY_KIND_RELEASE,
    "expiry": points_pb2.LEDGER_ENTRY_KIND_EXPIRY,
    "adjustment": points_pb2.LEDGER_ENTRY_KIND_ADJUSTMENT,
    "debt_settlement": points_pb2.LEDGER_ENTRY_KIND_DEBT_SETTLEMENT,
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


_REWARD_KINDS = {number: name for name, number in REWARD_KINDS.items()}


def _hold_id(hold_id: str) -> str:
    try:
        uuid.UUID(hold_id)
    except ValueError:
        raise InvalidInput("invalid_hold_id", "hold_id must be a UUID") from None
    return hold_id


def _account(account: Account) -> points_pb2.Account:
    message = points_pb2.Account(
        mall_id=account.mall_id,
        member_id=account.member_id,
        balance=account.balance,
        held=account.held,
        available=account.available,
        lifetime_earned=account.lifetime_earned,
        debt=account.debt,
    )
    if account.updated_at:
        message.updated_at.CopyFrom(timestamp(account.updated_at))
    return message


def _entry(e: LedgerEntry) -> points_pb2.LedgerEntry:
    return points_pb2.LedgerEntry(
        entry_id=str(e.entry_id),
        kind=_KINDS[e.kind],
        points=e.points,
        balance_after=e.balance_after,
        transaction_id=e.transaction_id or "",
        reference=e.reference,
        description=e.description,
        created_at=timestamp(e.created_at),
    )


class PointsServicer(points_service_pb2_grpc.PointsServiceServicer):
    def __init__(
        self, pool: asyncpg.Pool, hold_ttl: timedelta = redemptions.DEFAULT_HOLD_TTL
    ) -> None:
        self._pool = pool
        self._hold_ttl = hold_ttl

    async def GetAccount(
        self, request: points_service_pb2.GetAccountRequest, context: Any
    ) -> points_service_pb2.GetAccountResponse:
        _member_key(request.mall_id, request.member_id)
        async with self._pool.acquire() as conn:
            account = await repository.get_account(conn, request.mall_id, request.member_id)
            expiring = await repository.next_expiring(conn, request.mall_id, request.member_id)
        reply = points_service_pb2.GetAccountResponse(account=_account(account))
        if expiring is not None:
            reply.next_expiring.points = expiring.points
            reply.next_expiring.expires_at.CopyFrom(timestamp(expiring.expires_at))
        return reply

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
                transaction_id=request.transaction_id or None,
            )
        page, more = entries[:size], len(entries) > size
        return points_service_pb2.ListLedgerResponse(
            entries=[_entry(e) for e in page],
            page=common_pb2.PageResponse(next_page_token=str(page[-1].entry_id) if more else ""),
        )

    async def HoldPoints(
        self, request: points_service_pb2.HoldPointsRequest, context: Any
    ) -> points_service_pb2.HoldPointsResponse:
        _member_key(request.mall_id, request.member_id)
        hold_request = HoldRequest(
            mall_id=request.mall_id,
            member_id=request.member_id,
            points=request.points,
            reward_kind=_REWARD_KINDS.get(request.reward_kind, ""),
            reward_ref=request.reward_ref,
            request_id=request.request_id,
        )
        async with self._pool.acquire() as conn:
            hold, account = await redemptions.hold_points(conn, hold_request, self._hold_ttl)
        return points_service_pb2.HoldPointsResponse(
            hold_id=hold.hold_id,
            expires_at=timestamp(hold.expires_at),
            account=_account(account),
        )

    async def ConfirmHold(
        self, request: points_service_pb2.ConfirmHoldRequest, context: Any
    ) -> points_service_pb2.ConfirmHoldResponse:
        if not request.mall_id:
            raise InvalidInput("missing_field", "mall_id is required")
        hold_id = _hold_id(request.hold_id)
        async with self._pool.acquire() as conn:
            redemption_id, account = await redemptions.confirm_hold(conn, request.mall_id, hold_id)
        return points_service_pb2.ConfirmHoldResponse(
            redemption_id=redemption_id, account=_account(account)
        )

    async def ReleaseHold(
        self, request: points_service_pb2.ReleaseHoldRequest, context: Any
    ) -> points_service_pb2.ReleaseHoldResponse:
        if not request.mall_id:
            raise InvalidInput("missing_field", "mall_id is required")
        hold_id = _hold_id(request.hold_id)
        async with self._pool.acquire() as conn:
            account = await redemptions.release_hold(conn, request.mall_id, hold_id, request.reason)
        return points_service_pb2.ReleaseHoldResponse(account=_account(account))

    async def AdjustPoints(
        self, request: points_service_pb2.AdjustPointsRequest, context: Any
    ) -> points_service_pb2.AdjustPointsResponse:
        _member_key(request.mall_id, request.member_id)
        adjustment = Adjustment(
            mall_id=request.mall_id,
            member_id=request.member_id,
            points=request.points,
            reason=request.reason,
            operator=request.operator,
            request_id=request.request_id,
        )
        async with self._pool.acquire() as conn:
            entry, account = await adjustments.adjust_points(conn, adjustment)
        return points_service_pb2.AdjustPointsResponse(
            entry=_entry(entry), account=_account(account)
        )
