"""The relay role's periodic job: confirm / release decided points holds, expire old quotes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import structlog
from kit.lifecycle import Component, sleep_or_stop

from parking.service_layer.holds import settle_holds
from parking.service_layer.ports import PointsPort

log = structlog.get_logger(__name__)


def holds_job(pool: asyncpg.Pool, points: PointsPort | None, interval_s: float) -> Component:
    async def run(stop: asyncio.Event) -> None:
        if points is None:
            log.warning("points_holds_job_disabled", reason="POINTS_GRPC_TARGET is empty")
            return
        while True:
            try:
                result = await settle_holds(pool, points, datetime.now(UTC))
                if result.confirmed or result.released or result.failed:
                    log.info("points_holds_settled", **vars(result))
            except Exception as exc:  # database away: try again next round
                log.warning("points_holds_job_failed", error=repr(exc))
            if await sleep_or_stop(stop, interval_s):
                return

    return run
