"""Deliver queued points reports to WeChat Pay (积分同步), until each is SENT or refused.

A 204 the client verified marks the report SENT. A refusal (a verified 4xx) marks it FAILED
with the platform's code, for ops: sending it again unchanged would be refused again. Anything
else (5xx, 429, timeouts, network errors, an answer whose signature does not verify, a bug of
ours) leaves it PENDING for another try after an exponential, capped, jittered delay: the
worker never gives up on a report, so nothing credited stays unreported.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo

import asyncpg
import structlog
from kit.db import DB_UNAVAILABLE
from kit.lifecycle import sleep_or_stop
from kit.liveness import HEARTBEATS
from wechatpay.client import PlatformRefused, PlatformUnavailable, ResponseNotVerified

from points.adapters import metrics
from points.adapters import wechat_sync as queue
from points.adapters.wechat_sync import ClaimedReport, Outcome
from points.domain.wechat_sync import DEFAULT_TIME_ZONE, SyncState, retry_delay

log = structlog.get_logger(__name__)

_OUTCOMES = {SyncState.SENT: "sent", SyncState.PENDING: "retried", SyncState.FAILED: "failed"}
HEARTBEAT = "points-wechat-sync"
#: How often the idle worker refreshes the backlog gauges.
_SAMPLE_EVERY_S = 5.0


class PointsPlatform(Protocol):
    """The one call the worker needs (``wechatpay.client.WeChatPayClient`` has it)."""

    async def notify_points(
        self,
        *,
        appid: str,
        transaction_id: str,
        openid: str,
        earn_points: bool,
        increased_points: int,
        points_update_time: datetime,
        total_points: int | None = None,
        no_points_remarks: str | None = None,
        sub_mchid: str | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class SyncPolicy:
    batch_size: int = 100
    #: How long a claim lasts. Longer than any call can take, so one row is never in flight
    #: twice at once; if a worker dies holding rows, they are sent again after this.
    lease_s: float = 60.0
    #: A call still running after this is abandoned (and retried); must be under the lease.
    send_timeout_s: float = 30.0
    retry_base_s: float = 1.0
    retry_max_s: float = 600.0
    poll_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.send_timeout_s < self.lease_s:
            raise ValueError("send_timeout_s must be positive and shorter than lease_s")
        if self.batch_size < 1 or self.retry_base_s <= 0 or self.retry_max_s < self.retry_base_s:
            raise ValueError("batch_size >= 1 and 0 < retry_base_s <= retry_max_s")


def _code(exc: Exception) -> str | None:
    """A code for ops to group transient failures by."""
    if isinstance(exc, ResponseNotVerified):
        return "RESPONSE_NOT_VERIFIED"
    if isinstance(exc, PlatformUnavailable):
        return exc.code or (f"HTTP_{exc.status}" if exc.status else "UNREACHABLE")
    if isinstance(exc, TimeoutError):
        return "TIMEOUT"
    return type(exc).__name__


def default_time_zone(mall_id: str) -> tzinfo:
    """Every mall's zone, until points keeps a copy of member's directory (which has it)."""
    return ZoneInfo(DEFAULT_TIME_ZONE)


class WeChatPointsSync:
    """The sync worker: a component of the ``relay`` role (outbound delivery)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        platform: PointsPlatform,
        *,
        policy: SyncPolicy | None = None,
        time_zone_of: Callable[[str], tzinfo] = default_time_zone,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._platform = platform
        self._policy = policy or SyncPolicy()
        self._time_zone_of = time_zone_of
        self._rng = rng or random.Random()  # jitter only: not a secret
        self._wake = asyncio.Event()
        self.sent = 0

    async def deliver_due(self) -> int:
        """Claim one batch of due reports, send them, save the outcomes; return the batch size."""
        policy = self._policy
        async with self._pool.acquire() as conn:
            claimed = await queue.claim_due(conn, limit=policy.batch_size, lease_s=policy.lease_s)
        if not claimed:
            return 0
        outcomes = await asyncio.gather(*(self._deliver(c) for c in claimed))
        async with self._pool.acquire() as conn:
            saved = await queue.save_outcomes(conn, outcomes)
        if saved < len(outcomes):  # a lease ran out mid-call; the newer claim decides
            log.warning("wechat_points_sync_superseded", count=len(outcomes) - saved)
        self.sent += sum(o.state is SyncState.SENT for o in outcomes)
        for state, outcome in _OUTCOMES.items():
            metrics.WECHAT_SYNC_CALLS.labels(outcome).inc(sum(o.state is state for o in outcomes))
        return len(claimed)

    async def sample_backlog(self) -> None:
        """Refresh the backlog gauges (what the FAILED and stuck-PENDING alerts read)."""
        try:
            async with self._pool.acquire() as conn:
                now = await queue.backlog(conn)
        except DB_UNAVAILABLE as exc:
            log.warning("wechat_points_sync_backlog_sample_failed", error=repr(exc))
            return
        metrics.WECHAT_SYNC_PENDING.set(now.pending)
        metrics.WECHAT_SYNC_FAILED.set(now.failed)
        metrics.WECHAT_SYNC_OLDEST_PENDING.set(now.oldest_pending_s)

    async def _deliver(self, claim: ClaimedReport) -> Outcome:
        r = claim.report
        key = (r.mall_id, r.transaction_id, r.kind, claim.attempt)
        fields = {"mall_id": r.mall_id, "transaction_id": r.transaction_id, "kind": r.kind.value}
        try:
            async with asyncio.timeout(self._policy.send_timeout_s):
                await self._platform.notify_points(
                    appid=r.appid,
                    transaction_id=r.transaction_id,
                    openid=r.openid,
                    earn_points=r.earn_points,
                    increased_points=r.increased_points,
                    points_update_time=claim.points_update_time.astimezone(
                        self._time_zone_of(r.mall_id)
                    ),
                    total_points=r.total_points,
                    no_points_remarks=r.no_points_remarks,
                    sub_mchid=r.sub_mchid,
                )
        except PlatformRefused as exc:
            # Alert on this line: the shopper's points are not shown in WeChat, and the
            # platform will not notify this payment's refunds until it is synced.
            log.error(
                "wechat_points_sync_refused",
                **fields,
                openid=r.openid,
                status=exc.status,
                code=exc.code,
                error=exc.message,
                attempt=claim.attempt,
            )
            return Outcome(*key, SyncState.FAILED, error_code=exc.code, error=exc.message)
        except Exception as exc:
            delay = retry_delay(
                claim.attempt,
                base_s=self._policy.retry_base_s,
                cap_s=self._policy.retry_max_s,
                jitter=self._rng.random(),
            )
            expected = isinstance(exc, PlatformUnavailable | TimeoutError)
            (log.warning if expected else log.error)(
                "wechat_points_sync_retry",
                **fields,
                attempt=claim.attempt,
                retry_in_s=round(delay, 3),
                error=repr(exc),
            )
            error = f"{type(exc).__name__}: {exc}"
            return Outcome(*key, SyncState.PENDING, delay, error_code=_code(exc), error=error)
        log.info("wechat_points_synced", **fields, attempt=claim.attempt, points=r.increased_points)
        return Outcome(*key, SyncState.SENT)

    async def run(self, stop: asyncio.Event) -> None:
        """Component: deliver until asked to stop. Woken by NOTIFY; polls for retries."""
        listener = await self._pool.acquire()

        def wake(*_: object) -> None:
            self._wake.set()

        await listener.add_listener(queue.NOTIFY_CHANNEL, wake)
        log.info("wechat_points_sync_started")
        backoff = 0.1
        sampled_at = 0.0
        try:
            while not stop.is_set():
                HEARTBEATS.beat(HEARTBEAT)  # every turn: /livez names a send that hangs
                self._wake.clear()  # before the claim, so a NOTIFY mid-batch is not lost
                try:
                    count = await self.deliver_due()
                    backoff = 0.1
                except Exception as exc:  # the database away: keep trying, slower each time
                    log.warning("wechat_points_sync_failed", error=repr(exc), retry_in_s=backoff)
                    if await sleep_or_stop(stop, backoff):
                        break
                    backoff = min(backoff * 2, 10.0)
                    continue
                if count == self._policy.batch_size:
                    continue
                if time.monotonic() - sampled_at >= _SAMPLE_EVERY_S:
                    await self.sample_backlog()
                    sampled_at = time.monotonic()
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait(
                    {waiter, stopper},
                    timeout=self._policy.poll_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
                stopper.cancel()
        finally:
            HEARTBEATS.forget(HEARTBEAT)
            await listener.remove_listener(queue.NOTIFY_CHANNEL, wake)
            await self._pool.release(listener)
