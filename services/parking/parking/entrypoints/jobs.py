"""The relay role's periodic job: confirm / release decided points holds, expire old quotes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import structlog
from kit.lifecycle import Component, every, work_until_stopped
from wechatpay.client import WeChatPayClient

from parking.adapters.wechatpay import ParkingPlatform
from parking.service_layer.holds import settle_holds
from parking.service_layer.ports import PointsPort
from parking.service_layer.wechat_parking import send_due

log = structlog.get_logger(__name__)


def holds_job(pool: asyncpg.Pool, points: PointsPort | None, interval_s: float) -> Component:
    async def run(stop: asyncio.Event) -> None:
        if points is None:
            log.warning("points_holds_job_disabled", reason="POINTS_GRPC_TARGET is empty")
            return

        async def tick() -> None:
            result = await settle_holds(pool, points, datetime.now(UTC))
            if result.confirmed or result.released or result.failed:
                log.info("points_holds_settled", **vars(result))

        # Any failure (database or points away) is tried again at the next round.
        await every(
            stop,
            interval_s,
            tick,
            failed_event="points_holds_job_failed",
            heartbeat="parking-holds",
        )

    return run


def wechat_job(
    pool: asyncpg.Pool,
    client: WeChatPayClient | None,
    *,
    interval_s: float,
    retry_max_s: float,
) -> Component:
    """The worker that sends parking state syncs and pay-score calls (relay role)."""

    async def run(stop: asyncio.Event) -> None:
        if client is None:
            log.warning(
                "wechat_parking_disabled",
                reason="WECHATPAY_API_BASE is not set: parking calls are queued, not sent",
            )
            return
        async with client:
            platform = ParkingPlatform(client)

            async def step() -> int:
                result = await send_due(pool, platform, retry_max_s=retry_max_s)
                return result.sent + result.skipped + result.failed + result.retrying

            await work_until_stopped(
                stop,
                step,
                idle_s=interval_s,
                failed_event="wechat_parking_job_failed",
                heartbeat="parking-wechatpay",
            )

    return run
