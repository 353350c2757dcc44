"""The WeChat card package mirror: flag a stock, record what each of its coupons should be at
the platform (from the coupons core's own events), and the worker that makes it so.

The claim never waits for the platform: the coupons core commits the claim and its
``coupons.coupon.claimed`` event; this side learns of it from the stream, records the wish in
its own table, and the worker calls the platform later, retrying with backoff. A refusal (a
verified 4xx) stops that coupon or stock as ``refused``, for ops (``card-package-status``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog
from kit.db import DB_UNAVAILABLE, Connection
from kit.errors import NotFound
from kit.lifecycle import work_until_stopped
from wechatpay.client import PlatformRefused, PlatformUnavailable

from coupons.adapters import card_package as sql
from coupons.adapters import card_package_stocks as stocks_sql
from coupons.adapters.card_package import CouponClaim
from coupons.adapters.card_package_platform import MerchantCoupons
from coupons.adapters.card_package_stocks import StockClaim
from coupons.domain.card_package import (
    Action,
    Wanted,
    after,
    coupon_code,
    next_action,
    request_no,
    settle,
    stock_request,
)
from coupons.service_layer.commitment_clawbacks import retry_delay

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CouponWish:
    """What one coupon event says the platform should show for its coupon."""

    mall_id: str
    coupon_id: str
    stock_id: str
    member_id: str
    wanted: Wanted
    use_time: datetime | None = None


async def record_wishes(conn: Connection, wishes: Sequence[CouponWish]) -> None:
    """Record, in stream order, what each coupon of a mirrored stock should be at the platform:
    two statements however many events (a flash grab publishes thousands of claims, nearly all
    of stocks that are not mirrored) — which stocks are mirrored, then each coupon's wishes
    folded by ``settle`` and written at once (the table keeps the same rule across batches)."""
    if not wishes:
        return
    flagged = await sql.flagged_stocks(conn, sorted({(w.mall_id, w.stock_id) for w in wishes}))
    settled: dict[tuple[str, str], CouponWish] = {}
    for w in wishes:
        if (w.mall_id, w.stock_id) not in flagged:
            continue
        before = settled.get((w.mall_id, w.coupon_id))
        if before is None or settle(before.wanted, w.wanted) is w.wanted:
            settled[(w.mall_id, w.coupon_id)] = w
    rows = [
        sql.Wish(
            w.mall_id,
            w.coupon_id,
            w.stock_id,
            w.member_id,
            coupon_code(w.mall_id, w.coupon_id),
            w.wanted,
            w.use_time,
        )
        for w in settled.values()
    ]
    await sql.want(conn, rows)


async def flag_stock(conn: Connection, mall_id: str, stock_id: str, mchid: str) -> bool:
    """Mirror a stock's coupons into the card package from now on (its creation at the
    platform is queued); False if it was flagged before."""
    terms = await stocks_sql.stock_terms(conn, mall_id, stock_id)
    if terms is None:
        raise NotFound("stock_not_found", f"no stock {stock_id} in mall {mall_id}")
    request = stock_request(
        terms, mchid=mchid, out_request_no=request_no("stock", mall_id, stock_id)
    )
    return await stocks_sql.flag_stock(conn, mall_id, stock_id, request)


@dataclass(frozen=True)
class MirrorPolicy:
    batch_size: int = 50
    lease_s: float = 60.0
    send_timeout_s: float = 30.0
    retry_base_s: float = 2.0
    retry_max_s: float = 1800.0
    poll_interval_s: float = 1.0


def _error(exc: Exception) -> tuple[str, str]:
    code = exc.code if isinstance(exc, PlatformUnavailable | PlatformRefused) else ""
    return code or type(exc).__name__, f"{type(exc).__name__}: {exc}"


class CardPackageWorker:
    """A component of the ``relay`` role; safe on several replicas (leased rows)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        platform: MerchantCoupons,
        *,
        policy: MirrorPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._platform = platform
        self._policy = policy or MirrorPolicy()
        self._rng = rng or random.Random()  # jitter only

    def _delay(self, failures: int) -> float:
        p = self._policy
        return retry_delay(
            failures + 1, base_s=p.retry_base_s, cap_s=p.retry_max_s, jitter=self._rng.random()
        )

    async def deliver_due(self) -> int:
        """One round: create due stocks, then move due coupons one step; how many rows."""
        p = self._policy
        async with self._pool.acquire() as conn:
            stocks = await stocks_sql.claim_stocks(conn, p.batch_size, p.lease_s)
        await asyncio.gather(*(self._create(s) for s in stocks))
        async with self._pool.acquire() as conn:
            coupons = await sql.claim_coupons(conn, p.batch_size, p.lease_s)
        await asyncio.gather(*(self._step(c) for c in coupons))
        return len(stocks) + len(coupons)

    async def _create(self, claim: StockClaim) -> None:
        fields = {"mall_id": claim.mall_id, "stock_id": claim.stock_id, "attempt": claim.attempts}
        try:
            async with asyncio.timeout(self._policy.send_timeout_s):
                platform_stock_id = await self._platform.create_stock(claim.request)
        except PlatformRefused as exc:
            log.error("card_package_stock_refused", **fields, code=exc.code, error=exc.message)
            async with self._pool.acquire() as conn:
                await stocks_sql.save_stock(
                    conn, claim, refused=True, code=exc.code, error=exc.message
                )
            return
        except Exception as exc:
            delay = self._delay(claim.failures)
            log.warning("card_package_stock_retry", **fields, retry_in_s=delay, error=repr(exc))
            code, text = _error(exc)
            async with self._pool.acquire() as conn:
                await stocks_sql.save_stock(conn, claim, retry_in_s=delay, code=code, error=text)
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await stocks_sql.save_stock(conn, claim, platform_stock_id=platform_stock_id)
        log.info("card_package_stock_created", **fields, platform_stock_id=platform_stock_id)

    async def _call(self, action: Action, c: CouponClaim) -> None:
        # Sending happens once; each use/return cycle has request numbers of its own.
        key = f"{c.coupon_id}/{action}" + (f"/{c.cycle}" if c.cycle else "")
        if action is Action.SEND:
            await self._platform.send(
                stock_id=c.platform_stock_id,
                appid=c.appid,
                openid=c.openid,
                coupon_code=c.coupon_code,
                out_request_no=request_no("send", c.mall_id, key),
            )
        elif action is Action.USE:
            assert c.use_time is not None
            await self._platform.use(
                stock_id=c.platform_stock_id,
                appid=c.appid,
                openid=c.openid,
                coupon_code=c.coupon_code,
                use_request_no=request_no("use", c.mall_id, key),
                use_time=c.use_time,
            )
        elif action is Action.RETURN:
            await self._platform.return_coupon(
                stock_id=c.platform_stock_id,
                coupon_code=c.coupon_code,
                return_request_no=request_no("return", c.mall_id, key),
            )
        elif action is Action.DEACTIVATE:
            await self._platform.deactivate(
                stock_id=c.platform_stock_id,
                coupon_code=c.coupon_code,
                deactivate_request_no=request_no("deactivate", c.mall_id, key),
                reason="券已在商圈撤销",
            )

    async def _step(self, c: CouponClaim) -> None:
        fields = {"mall_id": c.mall_id, "coupon_id": c.coupon_id, "attempt": c.attempts}
        action = next_action(c.wanted, c.platform)
        if action is None:
            async with self._pool.acquire() as conn:
                await sql.settle_final(conn, c)
            return
        try:
            async with asyncio.timeout(self._policy.send_timeout_s):
                await self._call(action, c)
        except PlatformRefused as exc:
            log.error(
                "card_package_coupon_refused", **fields, action=action, code=exc.code,
                error=exc.message,
            )  # fmt: skip
            async with self._pool.acquire() as conn:
                await sql.save_coupon(conn, c, refused=True, code=exc.code, error=exc.message)
            return
        except Exception as exc:
            delay = self._delay(c.failures)
            log.warning(
                "card_package_coupon_retry", **fields, action=action, retry_in_s=delay,
                error=repr(exc),
            )  # fmt: skip
            code, text = _error(exc)
            async with self._pool.acquire() as conn:
                await sql.save_coupon(conn, c, retry_in_s=delay, code=code, error=text)
            return
        async with self._pool.acquire() as conn:
            await sql.save_coupon(conn, c, platform=after(action, c.platform))
        log.info("card_package_coupon_synced", **fields, action=action)

    async def run(self, stop: asyncio.Event) -> None:
        """Component: mirror until asked to stop, polling for due rows."""
        await work_until_stopped(
            stop,
            self.deliver_due,
            idle_s=self._policy.poll_interval_s,
            failed_event="card_package_worker_failed",
            transient=DB_UNAVAILABLE,
            heartbeat="coupons-card-package",
        )
