"""Clients of the member and points services, returning plain data for the views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from kit.errors import AppError, Unavailable
from kit.grpc_errors import from_rpc_error
from mall.common.v1 import common_pb2
from mall.member.v1 import member_pb2, member_service_pb2, member_service_pb2_grpc
from mall.points.v1 import points_pb2, points_service_pb2, points_service_pb2_grpc

_KIND_NAMES = {
    v: k.removeprefix("LEDGER_ENTRY_KIND_").lower() for k, v in points_pb2.LedgerEntryKind.items()
}


def _reraise(exc: grpc.aio.AioRpcError) -> AppError:
    error = from_rpc_error(exc)
    if error is None or error.code == "unknown":
        # No stable code: the backend was not reached (a transport UNAVAILABLE) or failed
        # outside the error model. Either way the shopper should retry, not read "unknown".
        return Unavailable("upstream_unavailable", "please retry shortly")
    return error


@dataclass(frozen=True)
class Backends:
    member: member_service_pb2_grpc.MemberServiceAsyncStub
    points: points_service_pb2_grpc.PointsServiceAsyncStub
    timeout_s: float = 3.0

    async def member_id_by_openid(self, mall_id: str, openid: str) -> str:
        try:
            reply = await self.member.GetMemberByIdentity(
                member_service_pb2.GetMemberByIdentityRequest(
                    mall_id=mall_id,
                    identity=member_pb2.Identity(
                        identity_type=member_pb2.IDENTITY_TYPE_OPENID, value=openid
                    ),
                ),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        return reply.member.member_id

    async def points_summary(
        self, mall_id: str, member_id: str, *, page_size: int, page_token: str
    ) -> dict[str, Any]:
        try:
            account = await self.points.GetAccount(
                points_service_pb2.GetAccountRequest(mall_id=mall_id, member_id=member_id),
                timeout=self.timeout_s,
            )
            ledger = await self.points.ListLedger(
                points_service_pb2.ListLedgerRequest(
                    mall_id=mall_id,
                    member_id=member_id,
                    page=common_pb2.PageRequest(page_size=page_size, page_token=page_token),
                ),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        a = account.account
        return {
            "mall_id": mall_id,
            "member_id": member_id,
            "balance": a.balance,
            "available": a.available,
            "lifetime_earned": a.lifetime_earned,
            "ledger": [
                {
                    "entry_id": e.entry_id,
                    "kind": _KIND_NAMES.get(e.kind, "unknown"),
                    "points": e.points,
                    "balance_after": e.balance_after,
                    "transaction_id": e.transaction_id,
                    "description": e.description,
                    "created_at": e.created_at.ToDatetime().isoformat() + "Z",
                }
                for e in ledger.entries
            ],
            "next_page_token": ledger.page.next_page_token or None,
        }
