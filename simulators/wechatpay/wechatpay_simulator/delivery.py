"""Notification delivery in the background: POST to the mall, retried on the platform's
schedule (scaled) until it answers 200 or 204, each attempt re-signed with a fresh timestamp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import aiohttp
import structlog

from wechatpay_simulator.config import Settings
from wechatpay_simulator.notifications import platform_headers
from wechatpay_simulator.state import Attempt, Delivery, DeliveryStatus, now

log = structlog.get_logger(__name__)

#: The answers that mean "received"; anything else (or no answer) is retried.
ACKNOWLEDGED = frozenset({200, 204})
_ANSWER_CHARS = 512


async def _discard_result(work: Coroutine[Any, Any, object]) -> None:
    await work


class Deliverer:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._session = session
        self._tasks: set[asyncio.Task[None]] = set()
        self._timeout = aiohttp.ClientTimeout(total=settings.delivery_timeout_s)

    def start(self, delivery: Delivery) -> None:
        """Deliver in the background: the first attempt now, then the retry schedule."""
        self._spawn(self._deliver(delivery))

    def redeliver(self, delivery: Delivery) -> None:
        """Send the same notification once more (fresh signature), as the platform sometimes
        does even after an acknowledgement: receivers must handle it once."""
        self._spawn(self._attempt(delivery))

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(_discard_result(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _gaps(self) -> list[float]:
        scale = self._settings.retry_scale
        return [gap * scale for gap in self._settings.retry_schedule_s]

    async def _deliver(self, delivery: Delivery) -> None:
        if await self._attempt(delivery):
            return
        if delivery.probe:
            return
        for gap in self._gaps():
            delivery.next_attempt_at = now() + timedelta(seconds=gap)
            await asyncio.sleep(gap)
            delivery.next_attempt_at = None
            if delivery.status is DeliveryStatus.DELIVERED:  # a redelivery got through
                return
            if await self._attempt(delivery):
                return
        delivery.status = DeliveryStatus.FAILED
        log.warning(
            "notification_gave_up", notification_id=delivery.id, attempts=len(delivery.attempts)
        )

    async def _attempt(self, delivery: Delivery) -> bool:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "wechatpay-simulator",
            **platform_headers(self._settings, delivery.body, probe=delivery.probe),
        }
        started = time.monotonic()
        at = now()
        status: int | None = None
        try:
            async with self._session.post(
                delivery.notify_url,
                data=delivery.body.encode(),
                headers=headers,
                timeout=self._timeout,
            ) as resp:
                status = resp.status
                answer = (await resp.text(errors="replace"))[:_ANSWER_CHARS]
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer = f"{type(exc).__name__}: {exc}"[:_ANSWER_CHARS]
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        delivery.attempts.append(Attempt(at, status, answer, duration_ms))
        ok = status in ACKNOWLEDGED
        if delivery.probe:
            delivery.status = DeliveryStatus.FAILED if ok else DeliveryStatus.DELIVERED
        elif ok:
            delivery.status = DeliveryStatus.DELIVERED
        log.info(
            "notification_attempt",
            notification_id=delivery.id,
            event_type=delivery.event_type,
            attempt=len(delivery.attempts),
            status=status,
            probe=delivery.probe,
            duration_ms=duration_ms,
        )
        return ok

    async def close(self) -> None:
        """Stop every delivery still waiting (the simulator is shutting down)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
