"""Redeeming points for a coupon (积分兑换): the gateway orchestrates points' hold and coupons'
POINTS claim, every step idempotent on a key derived from the app's ``request_id``:

1. ``HoldPoints(points_price, key = hold_key(member, request_id))`` — refused
   ``insufficient_points`` with nothing held;
2. ``ClaimCoupon(channel POINTS, points_hold_id, request_id)``;
3. claimed → ``ConfirmHold`` (the one debit); refused → ``ReleaseHold`` and the refusal.

A retry with the same request_id — after an answer, or after a crash between any two steps —
finds the same hold, the same coupon (coupons answers a claimed request_id with its coupon
before any limit) and the same confirmation, so it ends in one coupon and one debit, or none.
When coupons' answer is unknown (timeout) the hold is kept: the app's retry settles it.

One gap the steps alone leave: a coupon claimed while its hold is no longer held (a retry after
the hold was released because an earlier claim was refused and the stock then had a coupon
again, or after the hold timed out, 15 min). The coupon is then paid with a second hold on a
derived key (``late_hold_key``), confirmed at once; if the member no longer has the points, the
coupon stays unpaid and is logged and counted (``mall_gateway_reward_unpaid_total``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from kit.errors import AppError, ErrorKind
from prometheus_client import Counter

from gateway.domain.rewards import (
    Redemption,
    RewardStock,
    hold_key,
    late_hold_key,
    no_such_stock,
    not_for_points,
)

log = structlog.get_logger("gateway.rewards")
UNPAID = Counter(
    "mall_gateway_reward_unpaid_total",
    "Coupons bought with points whose hold could not be confirmed nor replaced (see logs)",
)
LATE = Counter(
    "mall_gateway_reward_late_holds_total",
    "Coupons paid with a second hold because the first was no longer held",
)


class Backend(Protocol):
    async def stock(self, mall_id: str, stock_id: str) -> RewardStock | None: ...

    async def profile(self, mall_id: str, member_id: str) -> tuple[str, tuple[str, ...]]: ...

    async def hold(
        self, mall_id: str, member_id: str, points: int, stock_id: str, key: str
    ) -> tuple[str, int]: ...

    async def claim(
        self,
        mall_id: str,
        member_id: str,
        stock_id: str,
        request_id: str,
        hold_id: str,
        profile: tuple[str, tuple[str, ...]],
    ) -> dict[str, Any]: ...

    async def confirm(self, mall_id: str, hold_id: str) -> tuple[str, int]: ...

    async def release(self, mall_id: str, hold_id: str, reason: str) -> None: ...

    async def open_rewards(
        self, mall_id: str, now: datetime, cursor: str, limit: int
    ) -> tuple[list[RewardStock], str | None]: ...


class Rewards:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._stocks: dict[tuple[str, str], RewardStock] = {}  # terms never change

    async def redeem(
        self, mall_id: str, member_id: str, stock_id: str, request_id: str
    ) -> Redemption:
        stock = await self._stock(mall_id, stock_id)
        profile: tuple[str, tuple[str, ...]] = ("", ())
        if not stock.anyone:
            profile = await self._backend.profile(mall_id, member_id)
        price = stock.points_price
        # points refuses insufficient_points (409, with `available`) holding nothing
        hold_id, _ = await self._backend.hold(
            mall_id, member_id, price, stock_id, hold_key(member_id, request_id)
        )
        try:
            coupon = await self._backend.claim(
                mall_id, member_id, stock_id, request_id, hold_id, profile
            )
        except AppError as refused:
            if refused.kind is not ErrorKind.UNAVAILABLE:  # refused: nothing was bought
                await self._release(mall_id, hold_id, refused.code)
            raise
        try:
            redemption_id, balance = await self._backend.confirm(mall_id, hold_id)
        except AppError as error:
            if error.code != "hold_not_held":
                raise
            redemption_id, balance = await self._pay_late(
                mall_id, member_id, stock, request_id, coupon
            )
        return Redemption(coupon, price, balance, redemption_id)

    async def open_rewards(
        self, mall_id: str, cursor: str, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        stocks, next_cursor = await self._backend.open_rewards(
            mall_id, datetime.now(UTC), cursor, limit
        )
        for s in stocks:
            self._keep(mall_id, s)
        return [s.view for s in stocks], next_cursor

    async def _release(self, mall_id: str, hold_id: str, reason: str) -> None:
        try:
            await self._backend.release(mall_id, hold_id, f"coupon claim refused: {reason}")
        except AppError as error:  # it times out by itself; the app's retry releases it again
            log.warning("reward_hold_not_released", hold_id=hold_id, error=error.code)

    async def _pay_late(
        self,
        mall_id: str,
        member_id: str,
        stock: RewardStock,
        request_id: str,
        coupon: dict[str, Any],
    ) -> tuple[str, int]:
        """The coupon was claimed but its hold is no longer held: pay with a second hold."""
        key = late_hold_key(member_id, request_id)
        try:
            hold_id, _ = await self._backend.hold(
                mall_id, member_id, stock.points_price, stock.stock_id, key
            )
            redemption_id, balance = await self._backend.confirm(mall_id, hold_id)
        except AppError as error:
            if error.kind is ErrorKind.UNAVAILABLE:
                raise
            UNPAID.inc()
            log.error(
                "reward_coupon_unpaid",
                mall_id=mall_id,
                member_id=member_id,
                coupon_id=coupon.get("coupon_id"),
                error=error.code,
            )
            raise
        LATE.inc()
        return redemption_id, balance

    async def _stock(self, mall_id: str, stock_id: str) -> RewardStock:
        stock = self._stocks.get((mall_id, stock_id))
        if stock is None:
            stock = await self._backend.stock(mall_id, stock_id)
            if stock is None:
                raise no_such_stock(stock_id)
            self._keep(mall_id, stock)
        if stock.points_price <= 0:
            raise not_for_points(stock_id)
        return stock

    def _keep(self, mall_id: str, stock: RewardStock) -> None:
        if len(self._stocks) >= 10_000:
            self._stocks.pop(next(iter(self._stocks)))
        self._stocks[(mall_id, stock.stock_id)] = stock
