"""Clients of the member and points services, returning plain data for the views."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2
from kit.errors import AppError, NotFound, Unavailable
from kit.grpc_errors import from_rpc_error
from mall.common.v1 import common_pb2
from mall.member.v1 import member_pb2, member_service_pb2, member_service_pb2_grpc
from mall.parking.v1 import parking_service_pb2_grpc
from mall.points.v1 import points_pb2, points_service_pb2, points_service_pb2_grpc

from gateway.domain.shoppers import MemberCard

_STATUS_NAMES = {
    v: k.removeprefix("MEMBER_STATUS_").lower() for k, v in member_pb2.MemberStatus.items()
}
_KIND_NAMES = {
    v: k.removeprefix("LEDGER_ENTRY_KIND_").lower() for k, v in points_pb2.LedgerEntryKind.items()
}


def _iso(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def member_card(member: member_pb2.Member) -> MemberCard:
    return MemberCard(
        member_id=member.member_id,
        mall_id=member.mall_id,
        tier_code=member.tier_code,
        status=_STATUS_NAMES.get(member.status, "unknown"),
        joined_at=member.joined_at.ToDatetime(tzinfo=UTC) if member.HasField("joined_at") else None,
        phone_masked=member.phone_masked,
        merged_into=member.merged_into_member_id or None,
    )


def ledger_entry(e: points_pb2.LedgerEntry) -> dict[str, Any]:
    return {
        "entry_id": e.entry_id,
        "kind": _KIND_NAMES.get(e.kind, "unknown"),
        "points": e.points,
        "balance_after": e.balance_after,
        "transaction_id": e.transaction_id,
        "description": e.description,
        "created_at": e.created_at.ToDatetime().isoformat() + "Z",
    }


def _unless_not_found(exc: grpc.aio.AioRpcError) -> None:
    """Raise the error, unless it says there is no such member (the caller answers None)."""
    error = _reraise(exc)
    if error.code != "member_not_found":
        raise error from None


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
    #: parking's ParkingService (plates, the stay in progress); None: not connected.
    parking: parking_service_pb2_grpc.ParkingServiceAsyncStub | None = None
    #: Standard gRPC health stubs by service name, for /readyz (none: nothing reported).
    health: dict[str, Any] = field(default_factory=dict)

    async def reachable(self, timeout_s: float = 0.5) -> dict[str, bool]:
        """Whether each service answers its health check now, checked concurrently."""

        async def check(stub: Any) -> bool:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        names = list(self.health)
        results = await asyncio.gather(*(check(self.health[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def member_by_openid(self, mall_id: str, openid: str) -> MemberCard | None:
        """The member with this openid in this mall; None when they are not one (yet)."""
        request = member_service_pb2.GetMemberByIdentityRequest(
            mall_id=mall_id,
            identity=member_pb2.Identity(
                identity_type=member_pb2.IDENTITY_TYPE_OPENID, value=openid
            ),
        )
        try:
            reply = await self.member.GetMemberByIdentity(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            _unless_not_found(exc)
            return None
        return member_card(reply.member)

    async def member_by_id(self, mall_id: str, member_id: str) -> MemberCard | None:
        request = member_service_pb2.GetMemberRequest(mall_id=mall_id, member_id=member_id)
        try:
            reply = await self.member.GetMember(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            _unless_not_found(exc)
            return None
        return member_card(reply.member)

    async def join_member(self, mall_id: str, openid: str, phone: str) -> tuple[MemberCard, bool]:
        """Join from the mini-program with the shopper's openid; (member, created)."""
        request = member_service_pb2.JoinMemberRequest(
            mall_id=mall_id,
            identity=member_pb2.Identity(
                identity_type=member_pb2.IDENTITY_TYPE_OPENID, value=openid
            ),
            channel=member_pb2.JOIN_CHANNEL_MINI_PROGRAM,
            phone=phone,
        )
        try:
            reply = await self.member.JoinMember(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        return member_card(reply.member), reply.created

    async def issue_checkout_code(self, mall_id: str, member_id: str) -> dict[str, Any]:
        request = member_service_pb2.IssueCheckoutCodeRequest(mall_id=mall_id, member_id=member_id)
        try:
            reply = await self.member.IssueCheckoutCode(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        return {"code": reply.code, "expires_at": _iso(reply.expires_at)}

    # -- the card's sections: ``fetch(mall_id, member_id, deadline_s)`` (see service_layer.card)

    async def card_member(self, mall_id: str, member_id: str, deadline_s: float) -> dict[str, Any]:
        request = member_service_pb2.GetMemberRequest(mall_id=mall_id, member_id=member_id)
        try:
            reply = await self.member.GetMember(request, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            error = _reraise(exc)
            if error.code == "member_not_found":
                raise NotFound("not_a_member", "join the mall first (POST /v1/me/join)") from None
            raise error from None
        card = member_card(reply.member)
        return {"tier_code": card.tier_code, "member_status": card.status}

    async def card_points(self, mall_id: str, member_id: str, deadline_s: float) -> dict[str, Any]:
        request = points_service_pb2.GetAccountRequest(mall_id=mall_id, member_id=member_id)
        try:
            reply = await self.points.GetAccount(request, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        a = reply.account
        expiring = (
            {
                "points": reply.next_expiring.points,
                "expires_at": _iso(reply.next_expiring.expires_at),
            }
            if reply.HasField("next_expiring")
            else None
        )
        return {"balance": a.balance, "available": a.available, "expiring_soon": expiring}

    async def ledger_page(
        self, mall_id: str, member_id: str, *, limit: int, cursor: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the member's ledger, newest first, and the cursor of the next one."""
        try:
            ledger = await self.points.ListLedger(
                points_service_pb2.ListLedgerRequest(
                    mall_id=mall_id,
                    member_id=member_id,
                    page=common_pb2.PageRequest(page_size=limit, page_token=cursor),
                ),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        return [ledger_entry(e) for e in ledger.entries], ledger.page.next_page_token or None

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
            "ledger": [ledger_entry(e) for e in ledger.entries],
            "next_page_token": ledger.page.next_page_token or None,
        }
