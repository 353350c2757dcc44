"""Collect failed commitment cards' clawbacks through the shopper's pay-score, until each is
COLLECTED or REFUSED.

A verified 2xx marks the clawback collected and publishes ``coupons.commitment.clawed_back``
in the same transaction. A refusal (a verified 4xx) marks it refused with the platform's
code, for ops (``commitment-clawbacks`` lists it, ``commitment-clawback-retry`` sends it
again). Anything else (5xx, 429, timeouts, network errors, an unverified answer, a bug of
ours) leaves it pending for another try after an exponential, capped, jittered delay. The
deduction's ``out_order_no`` is fixed per card, so a retry never deducts twice.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import asyncpg
import structlog
from eventbus.outbox import add_events
from kit.db import DB_UNAVAILABLE
from kit.lifecycle import work_until_stopped
from wechatpay.client import PlatformRefused, PlatformUnavailable

from coupons.adapters import commitment_clawbacks as queue
from coupons.adapters import commitment_events as events
from coupons.adapters.commitment_clawbacks import Clawback
from coupons.adapters.commitment_payscore import PayScore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ClawbackPolicy:
    batch_size: int = 20
    #: How long a claim lasts; longer than any call, so a row is never in flight twice.
    lease_s: float = 60.0
    send_timeout_s: float = 30.0
    retry_base_s: float = 5.0
    retry_max_s: float = 3600.0
    poll_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.send_timeout_s < self.lease_s:
            raise ValueError("send_timeout_s must be positive and shorter than lease_s")


def retry_delay(attempts: int, *, base_s: float, cap_s: float, jitter: float) -> float:
    """Exponential, capped, "equal jitter" (half kept, half random in [0, 1))."""
    step = min(cap_s, base_s * 2.0 ** min(max(attempts, 1) - 1, 62))
    return step / 2 + step / 2 * jitter


class ClawbackWorker:
    """A component of the ``relay`` role (outbound delivery), safe on several replicas."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        payscore: PayScore,
        *,
        policy: ClawbackPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._payscore = payscore
        self._policy = policy or ClawbackPolicy()
        self._rng = rng or random.Random()  # jitter only: not a secret

    async def deliver_due(self) -> int:
        """Claim one batch of due clawbacks, call the platform, save each outcome."""
        policy = self._policy
        async with self._pool.acquire() as conn:
            claimed = await queue.claim_due(conn, policy.batch_size, policy.lease_s)
        await asyncio.gather(*(self._deliver(c) for c in claimed))
        return len(claimed)

    async def _deliver(self, claim: Clawback) -> None:
        fields = {"mall_id": claim.mall_id, "card_id": claim.card_id, "attempt": claim.attempts}
        try:
            async with asyncio.timeout(self._policy.send_timeout_s):
                order_id = await self._payscore.deduct(
                    appid=claim.appid,
                    openid=claim.openid,
                    out_order_no=claim.out_order_no,
                    amount_fen=claim.amount_fen,
                    started_at=claim.window_start,
                    ended_at=claim.window_end,
                )
        except PlatformRefused as exc:
            log.error("commitment_clawback_refused", **fields, code=exc.code, error=exc.message)
            async with self._pool.acquire() as conn:
                await queue.save_failure(
                    conn, claim, refused=True, retry_in_s=0, code=exc.code, error=exc.message
                )
            return
        except Exception as exc:
            delay = retry_delay(
                claim.attempts,
                base_s=self._policy.retry_base_s,
                cap_s=self._policy.retry_max_s,
                jitter=self._rng.random(),
            )
            expected = isinstance(exc, PlatformUnavailable | TimeoutError)
            (log.warning if expected else log.error)(
                "commitment_clawback_retry", **fields, retry_in_s=round(delay, 3), error=repr(exc)
            )
            code = exc.code if isinstance(exc, PlatformUnavailable) and exc.code else ""
            async with self._pool.acquire() as conn:
                await queue.save_failure(
                    conn,
                    claim,
                    refused=False,
                    retry_in_s=delay,
                    code=code or type(exc).__name__,
                    error=f"{type(exc).__name__}: {exc}",
                )
            return
        async with self._pool.acquire() as conn, conn.transaction():
            if await queue.save_collected(conn, claim, order_id):
                await add_events(conn, [events.clawed_back(claim)])
                log.info("commitment_clawed_back", **fields, amount_fen=claim.amount_fen)
            else:
                log.warning("commitment_clawback_superseded", **fields)

    async def run(self, stop: asyncio.Event) -> None:
        """Component: deliver until asked to stop, polling for due rows."""
        await work_until_stopped(
            stop,
            self.deliver_due,
            idle_s=self._policy.poll_interval_s,
            full=self._policy.batch_size,
            failed_event="commitment_clawbacks_failed",
            transient=DB_UNAVAILABLE,
            heartbeat="coupons-commitment-clawbacks",
        )
