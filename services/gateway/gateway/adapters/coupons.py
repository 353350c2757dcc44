"""Client of the coupons service (CouponsService, CommitmentService): plain data for the views.

``claim_batch`` is the flash grab's one RPC per batch (``ClaimCoupons``); the coalescing is in
``gateway.service_layer.claims``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from kit.errors import AppError, ErrorKind, NotFound, Unavailable
from kit.grpc_errors import from_rpc_error
from mall.common.v1 import common_pb2
from mall.coupons.v1 import (
    commitments_service_pb2,
    commitments_service_pb2_grpc,
    coupons_pb2,
    coupons_service_pb2,
    coupons_service_pb2_grpc,
)
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc

from gateway.domain.claims import Claimed, ClaimRequest, refusal


def _names(enum: Any, prefix: str) -> dict[int, str]:
    return {v: k.removeprefix(prefix).lower() for k, v in enum.items()}


_STATUSES = _names(coupons_pb2.CouponStatus, "COUPON_STATUS_")
_TYPES = _names(coupons_pb2.CouponType, "COUPON_TYPE_")
_CHANNELS = _names(coupons_pb2.ClaimChannel, "CLAIM_CHANNEL_")
_CARD_STATUSES = _names(commitments_service_pb2.CommitmentCardStatus, "COMMITMENT_CARD_STATUS_")
_CLAWBACKS = _names(commitments_service_pb2.ClawbackStatus, "CLAWBACK_STATUS_")
#: The wallet's filter → coupons' status.
WALLET_FILTERS = {
    "usable": coupons_pb2.COUPON_STATUS_AVAILABLE,
    "used": coupons_pb2.COUPON_STATUS_USED,
    "expired": coupons_pb2.COUPON_STATUS_EXPIRED,
}


def _iso(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _iso_or_none(message: Any, name: str) -> str | None:
    return _iso(getattr(message, name)) if message.HasField(name) else None


def coupon(c: coupons_pb2.Coupon) -> dict[str, Any]:
    return {
        "coupon_id": c.coupon_id,
        "stock_id": c.stock_id,
        "tenant_id": c.tenant_id,
        "status": _STATUSES.get(c.status, "unspecified"),
        "channel": _CHANNELS.get(c.channel, "unspecified"),
        "title": c.title,
        "coupon_type": _TYPES.get(c.coupon_type, "unspecified"),
        "discount_fen": c.discount_fen,
        "threshold_fen": c.threshold_fen,
        "percent_off": c.percent_off,
        "max_discount_fen": c.max_discount_fen,
        "parking_minutes": c.parking_minutes,
        "claimed_at": _iso(c.claimed_at),
        "valid_from": _iso(c.valid_from),
        "valid_until": _iso(c.valid_until),
        "redeemed_at": _iso_or_none(c, "redeemed_at"),
        "redeemed_store_id": c.redeemed_store_id or None,
    }


def commitment_card(c: commitments_service_pb2.CommitmentCard) -> dict[str, Any]:
    clawback = (
        {
            "status": _CLAWBACKS.get(c.clawback.status, "unspecified"),
            "amount_fen": c.clawback.amount_fen,
        }
        if c.HasField("clawback")
        else None
    )
    return {
        "card_id": c.card_id,
        "offer_id": c.offer_id,
        "tenant_id": c.tenant_id,
        "status": _CARD_STATUSES.get(c.status, "unspecified"),
        "purchases_required": c.purchases_required,
        "purchases_made": c.purchases_made,
        "min_amount_fen": c.min_amount_fen,
        "discount_fen": c.discount_fen,
        "discount_given_fen": c.discount_given_fen,
        "accepted_at": _iso(c.accepted_at),
        "deadline": _iso(c.deadline),
        "settled_at": _iso_or_none(c, "settled_at"),
        "store_ids": list(c.store_ids),
        "clawback": clawback,
    }


def _reraise(exc: grpc.aio.AioRpcError) -> AppError:
    error = from_rpc_error(exc)
    if error is None or error.code == "unknown":
        return Unavailable("upstream_unavailable", "please retry shortly")
    return error


@dataclass(frozen=True)
class Audience:
    """Who may claim a stock (its terms never change, so the gateway keeps them)."""

    tiers: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def anyone(self) -> bool:
        return not self.tiers and not self.tags


@dataclass(frozen=True)
class CouponsClient:
    coupons: coupons_service_pb2_grpc.CouponsServiceAsyncStub
    commitments: commitments_service_pb2_grpc.CommitmentServiceAsyncStub
    member: member_service_pb2_grpc.MemberServiceAsyncStub
    timeout_s: float = 3.0

    async def wallet(
        self, mall_id: str, member_id: str, *, status: str | None, limit: int, cursor: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        request = coupons_service_pb2.ListMemberCouponsRequest(
            mall_id=mall_id,
            member_id=member_id,
            status=WALLET_FILTERS[status] if status else coupons_pb2.COUPON_STATUS_UNSPECIFIED,
            page=common_pb2.PageRequest(page_size=limit, page_token=cursor),
        )
        try:
            reply = await self.coupons.ListMemberCoupons(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        return [coupon(c) for c in reply.coupons], reply.page.next_page_token or None

    async def card_section(self, mall_id: str, member_id: str, deadline_s: float) -> dict[str, Any]:
        """The member card's coupons section (``SectionSource`` fetch)."""
        request = coupons_service_pb2.GetWalletSummaryRequest(mall_id=mall_id, member_id=member_id)
        try:
            reply = await self.coupons.GetWalletSummary(request, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        return {"usable": reply.available, "next_expiry": _iso_or_none(reply, "next_expiry")}

    async def audience(self, mall_id: str, stock_id: str) -> Audience | None:
        """The stock's audience; None when there is no such stock."""
        request = coupons_service_pb2.GetStockRequest(mall_id=mall_id, stock_id=stock_id)
        try:
            reply = await self.coupons.GetStock(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = _reraise(exc)
            if error.code == "stock_not_found":
                return None
            raise error from None
        s = reply.stock
        return Audience(tuple(s.audience_tiers), tuple(s.audience_tags))

    async def profile(self, mall_id: str, member_id: str) -> tuple[str, tuple[str, ...]]:
        """The member's tier and tags (for a stock with an audience)."""
        request = member_service_pb2.GetMemberRequest(mall_id=mall_id, member_id=member_id)
        try:
            reply = await self.member.GetMember(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = _reraise(exc)
            if error.code == "member_not_found":
                raise NotFound("not_a_member", "join the mall first (POST /v1/me/join)") from None
            raise error from None
        return reply.member.tier_code, tuple(reply.member.tags)

    async def claim_batch(self, claims: Sequence[ClaimRequest]) -> list[Claimed]:
        """One ClaimCoupons call for many claims; one answer per claim, in order."""
        request = coupons_service_pb2.ClaimCouponsRequest(
            claims=[
                coupons_service_pb2.ClaimCouponRequest(
                    mall_id=c.mall_id,
                    stock_id=c.stock_id,
                    member_id=c.member_id,
                    request_id=c.request_id,
                    tier_code=c.tier_code,
                    tags=c.tags,
                    channel=coupons_pb2.CLAIM_CHANNEL_MINI_PROGRAM,
                )
                for c in claims
            ]
        )
        try:
            reply = await self.coupons.ClaimCoupons(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        return [
            Claimed(coupon(r.coupon))
            if r.outcome == coupons_service_pb2.CLAIM_OUTCOME_CLAIMED
            else Claimed(None, refusal(r.reason))
            for r in reply.results
        ]

    async def claim_by_code(self, claim: ClaimRequest, code: str) -> dict[str, Any]:
        request = coupons_service_pb2.ClaimCouponByCodeRequest(
            mall_id=claim.mall_id,
            code=code,
            member_id=claim.member_id,
            request_id=claim.request_id,
            tier_code=claim.tier_code,
            tags=claim.tags,
        )
        try:
            reply = await self.coupons.ClaimCouponByCode(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = _reraise(exc)
            if error.kind is ErrorKind.UNAVAILABLE:
                raise error from None
            raise refusal(error.code, error.message) from None
        return coupon(reply.coupon)

    async def accept_commitment(
        self, mall_id: str, member_id: str, offer_id: str, *, appid: str, openid: str
    ) -> dict[str, Any]:
        request = commitments_service_pb2.AcceptCommitmentCardRequest(
            mall_id=mall_id, offer_id=offer_id, member_id=member_id, appid=appid, openid=openid
        )
        try:
            reply = await self.commitments.AcceptCommitmentCard(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        return commitment_card(reply.card)

    async def commitment_cards(self, mall_id: str, member_id: str) -> list[dict[str, Any]]:
        request = commitments_service_pb2.ListMemberCommitmentCardsRequest(
            mall_id=mall_id, member_id=member_id
        )
        try:
            reply = await self.commitments.ListMemberCommitmentCards(
                request, timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise _reraise(exc) from None
        return [commitment_card(c) for c in reply.cards]
