"""What the service layer needs from outside that is not its database."""

from __future__ import annotations

from typing import Protocol


class PointsPort(Protocol):
    """points' redemption API: hold at the quote, confirm at the exit, release otherwise.
    Raises kit.errors.AppError for a refusal, anything else for an outage."""

    async def hold(
        self, mall_id: str, member_id: str, points: int, *, reward_ref: str, request_id: str
    ) -> str: ...

    async def confirm(self, mall_id: str, hold_id: str) -> None: ...

    async def release(self, mall_id: str, hold_id: str, reason: str) -> None: ...
