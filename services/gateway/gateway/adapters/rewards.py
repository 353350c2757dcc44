"""Rewards bought with points (积分兑换): points' hold API (HoldPoints / ConfirmHold /
ReleaseHold) and coupons' stocks and POINTS claims, as plain data for
``gateway.service_layer.rewards``.

Every call is idempotent on its key (points: the hold's request_id, then its hold_id; coupons:
the member's request_id), so the service layer may repeat any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from kit.errors import AppError, ErrorKind, InvalidInput, Unavailable
from kit.grpc_errors import from_rpc_error
from mall.common.v1 import common_pb2
from mall.coupons.v1 import coupons_pb2, coupons_service_pb2, coupons_service_pb2_grpc
from mall.points.v1 import points_pb2, points_service_pb2, points_service_pb2_grpc

from gateway.adapters.coupons import CouponsClient, coupon
from gateway.domain.claims import refusal
from gateway.domain.rewards import RewardStock

_TYPES = {v: k.removeprefix("COUPON_TYPE_").lower() for k, v in coupons_pb2.CouponType.items()}
#: How many of coupons' stock pages one listing reads at most while they hold no reward.
MAX_STOCK_PAGES = 5


def _error(exc: grpc.aio.AioRpcError) -> AppError:
    error = from_rpc_error(exc)
    if error is None or error.code == "unknown":
        return Unavailable("upstream_unavailable", "please retry shortly")
    return error


def _iso(ts: Any) -> str:
    return str(ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z"))


def reward_stock(s: coupons_pb2.Stock) -> RewardStock:
    return RewardStock(
        stock_id=s.stock_id,
        points_price=s.points_price,
        audience_tiers=tuple(s.audience_tiers),
        audience_tags=tuple(s.audience_tags),
        view={
            "stock_id": s.stock_id,
            "tenant_id": s.tenant_id,
            "title": s.title,
            "description": s.description,
            "coupon_type": _TYPES.get(s.coupon_type, "unspecified"),
            "discount_fen": s.discount_fen,
            "threshold_fen": s.threshold_fen,
            "percent_off": s.percent_off,
            "max_discount_fen": s.max_discount_fen,
            "parking_minutes": s.parking_minutes,
            "points_price": s.points_price,
            "max_per_member": s.max_per_member,
            "claim_ends_at": _iso(s.claim_ends_at),
            "valid_days": s.valid_days,
            "valid_until": _iso(s.valid_until) if s.HasField("valid_until") else None,
        },
    )


@dataclass(frozen=True)
class RewardsClient:
    points: points_service_pb2_grpc.PointsServiceAsyncStub
    coupons: coupons_service_pb2_grpc.CouponsServiceAsyncStub
    profiles: CouponsClient
    timeout_s: float = 3.0

    async def stock(self, mall_id: str, stock_id: str) -> RewardStock | None:
        request = coupons_service_pb2.GetStockRequest(mall_id=mall_id, stock_id=stock_id)
        try:
            reply = await self.coupons.GetStock(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = _error(exc)
            if error.code in ("stock_not_found", "invalid_stock_id"):
                return None
            raise error from None
        return reward_stock(reply.stock)

    async def profile(self, mall_id: str, member_id: str) -> tuple[str, tuple[str, ...]]:
        return await self.profiles.profile(mall_id, member_id)

    async def hold(
        self, mall_id: str, member_id: str, points: int, stock_id: str, key: str
    ) -> tuple[str, int]:
        """The hold's id and the points available after it; raises ``insufficient_points``."""
        request = points_service_pb2.HoldPointsRequest(
            mall_id=mall_id,
            member_id=member_id,
            points=points,
            reward_kind=points_pb2.REWARD_KIND_COUPON,
            reward_ref=stock_id,
            request_id=key,
        )
        try:
            reply = await self.points.HoldPoints(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return reply.hold_id, reply.account.available

    async def claim(
        self,
        mall_id: str,
        member_id: str,
        stock_id: str,
        request_id: str,
        hold_id: str,
        profile: tuple[str, tuple[str, ...]],
    ) -> dict[str, Any]:
        """The coupon bought with the hold; raises the refusal (``domain.claims`` codes), or
        ``Unavailable`` when the outcome is unknown."""
        request = coupons_service_pb2.ClaimCouponRequest(
            mall_id=mall_id,
            stock_id=stock_id,
            member_id=member_id,
            request_id=request_id,
            tier_code=profile[0],
            tags=profile[1],
            channel=coupons_pb2.CLAIM_CHANNEL_POINTS,
            points_hold_id=hold_id,
        )
        try:
            reply = await self.coupons.ClaimCoupon(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = _error(exc)
            if error.kind is ErrorKind.UNAVAILABLE:
                raise error from None
            raise refusal(error.code, error.message) from None
        return coupon(reply.coupon)

    async def confirm(self, mall_id: str, hold_id: str) -> tuple[str, int]:
        """The redemption id and the balance after it; raises ``hold_not_held`` (Conflict)
        for a hold released or timed out."""
        request = points_service_pb2.ConfirmHoldRequest(mall_id=mall_id, hold_id=hold_id)
        try:
            reply = await self.points.ConfirmHold(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return reply.redemption_id, reply.account.balance

    async def release(self, mall_id: str, hold_id: str, reason: str) -> None:
        """Give the hold back (again: nothing more); a confirmed hold raises ``hold_not_held``."""
        request = points_service_pb2.ReleaseHoldRequest(
            mall_id=mall_id, hold_id=hold_id, reason=reason
        )
        try:
            await self.points.ReleaseHold(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def open_rewards(
        self, mall_id: str, now: datetime, cursor: str, limit: int
    ) -> tuple[list[RewardStock], str | None]:
        """Active stocks priced in points whose claim window is open at ``now``, newest first:
        coupons' ``ListStocks`` (status ACTIVE) pages of ``limit`` stocks, filtered, read until
        one holds a reward (at most ``MAX_STOCK_PAGES``); so at most ``limit`` rewards, maybe
        fewer, and the cursor continues where coupons' last page ended."""
        found: list[RewardStock] = []
        token = cursor
        for _ in range(MAX_STOCK_PAGES):
            request = coupons_service_pb2.ListStocksRequest(
                mall_id=mall_id,
                status=coupons_pb2.STOCK_STATUS_ACTIVE,
                page=common_pb2.PageRequest(page_size=limit, page_token=token),
            )
            try:
                reply = await self.coupons.ListStocks(request, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                error = _error(exc)
                if error.code == "invalid_page_token":
                    raise InvalidInput("invalid_page_token", "cursor is not valid") from None
                raise error from None
            for s in reply.stocks:
                opened = s.claim_starts_at.ToDatetime(tzinfo=UTC) <= now
                if s.points_price > 0 and opened:
                    found.append(reward_stock(s))
            token = reply.page.next_page_token
            if not token or found:
                break
        return found, token or None
