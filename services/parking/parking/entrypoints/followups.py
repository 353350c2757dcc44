"""Points holds confirmed or released right after the call that decided them, off its answer;
the relay role's job retries whatever this does not finish."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import structlog

from parking.service_layer.holds import settle_holds
from parking.service_layer.ports import PointsPort

log = structlog.get_logger(__name__)
HOLD_CALL_TIMEOUT_S = 3.0


class HoldFollowUps:
    def __init__(self, pool: asyncpg.Pool, points: PointsPort | None) -> None:
        self._pool = pool
        self._points = points
        self._background: set[asyncio.Task[None]] = set()

    def after(self, mall_id: str, session_id: str) -> None:
        """Confirm or release the session's decided points holds now, in the background."""
        if self._points is None:
            return
        points = self._points

        async def run() -> None:
            try:
                async with asyncio.timeout(HOLD_CALL_TIMEOUT_S):
                    await settle_holds(
                        self._pool,
                        points,
                        datetime.now(UTC),
                        mall_id=mall_id,
                        session_id=session_id,
                    )
            except Exception as exc:
                log.warning("points_hold_followup_failed", error=repr(exc))

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
