"""Redemption (核销) at a tenant POS, idempotent on the use request id.

The hot path batches what arrives together (group commit): the POS calls that are waiting
when a worker is free are answered with two statements and no explicit transaction — read the
coupons, judge each, then one statement marks the good ones used (only if each is still
available and valid) and queues their events in the outbox, atomically. A coupon that changed
under it (a concurrent use won) is answered by the locked path, which sees the final state. An
idle service runs a batch of one at once: batching adds no wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
from eventbus.outbox import add_events
from kit import context
from kit.batching import Batcher
from kit.db import Connection
from kit.errors import AppError, NotFound

from coupons.adapters import coupons as coupons_sql
from coupons.adapters import events
from coupons.adapters.coupons import Locked, Usage
from coupons.domain.coupons import Coupon
from coupons.domain.redemption import Use, check

Answer = tuple[Coupon, int] | AppError


def _retry_of(found: Locked, use: Use) -> bool:
    held = found.held
    return (
        held.status == "used"
        and held.use_request_id == use.use_request_id
        and held.redeemed_store_id == use.store_id
    )


def _used(found: Locked, use: Use, now: datetime, off: int, headers: dict[str, str]) -> Usage:
    coupon = replace(found.coupon, status="used", redeemed_at=now, redeemed_store_id=use.store_id)
    return Usage(
        mall_id=use.mall_id,
        coupon_id=use.coupon_id,
        store_id=use.store_id,
        use_request_id=use.use_request_id,
        order_amount_fen=use.order_amount_fen,
        discount_fen=off,
        transaction_id=use.transaction_id,
        event=events.coupon_redeemed(
            coupon,
            store_id=use.store_id,
            use_request_id=use.use_request_id,
            order_amount_fen=use.order_amount_fen,
            discount_fen=off,
            headers=headers,
        ),
    )


async def redeem_batch(
    conn: Connection,
    uses: Sequence[Use],
    headers: Sequence[dict[str, str]] | None = None,
    now: datetime | None = None,
) -> list[Answer]:
    """One answer per use, in order: the used coupon and the fen it takes off, or the refusal.
    A retry of the same use (same request id and store) answers as the first time."""
    now = now or datetime.now(UTC)
    answers: list[Answer | None] = [None] * len(uses)
    first: dict[tuple[str, str], int] = {}
    later: list[int] = []  # a second use of a coupon in this batch: after the first commits
    for i, use in enumerate(uses):
        if (use.mall_id, use.coupon_id) in first:
            later.append(i)
        else:
            first[(use.mall_id, use.coupon_id)] = i
    found = await coupons_sql.read_many(conn, list(first))
    usages: dict[str, tuple[int, Usage]] = {}
    for key, i in first.items():
        use, coupon = uses[i], found.get(key)
        if coupon is None:
            answers[i] = NotFound("coupon_not_found", f"no coupon {use.coupon_id}")
        elif _retry_of(coupon, use):
            answers[i] = (coupon.coupon, coupon.held.discount_fen)
        else:
            try:
                off = check(coupon.held, use, now)
            except AppError as refusal:
                answers[i] = refusal
                continue
            cause = headers[i] if headers is not None else context.current()
            usages[use.coupon_id] = (i, _used(coupon, use, now, off, cause))
    if usages:
        done = await coupons_sql.use_if_available(conn, [u for _, u in usages.values()], now)
        for coupon_id, (i, usage) in usages.items():
            if coupon_id in done:
                used = replace(
                    found[(usage.mall_id, coupon_id)].coupon,
                    status="used",
                    redeemed_at=now,
                    redeemed_store_id=usage.store_id,
                )
                answers[i] = (used, usage.discount_fen)
            else:
                later.append(i)
    for i in sorted(later):
        try:
            answers[i] = await redeem_locked(conn, uses[i], now)
        except AppError as refusal:
            answers[i] = refusal
    return [a if a is not None else NotFound("coupon_not_found", "no answer") for a in answers]


async def redeem(conn: Connection, use: Use, now: datetime | None = None) -> tuple[Coupon, int]:
    """One redemption (tests, tools); raises the refusal."""
    (answer,) = await redeem_batch(conn, [use], now=now)
    if isinstance(answer, AppError):
        raise answer
    return answer


async def redeem_locked(conn: Connection, use: Use, now: datetime) -> tuple[Coupon, int]:
    """One redemption under a row lock: the answer when the fast path lost a race."""
    async with conn.transaction():
        locked = await coupons_sql.lock(conn, use.mall_id, use.coupon_id)
        if locked is None:
            raise NotFound("coupon_not_found", f"no coupon {use.coupon_id}")
        if _retry_of(locked, use):
            return locked.coupon, locked.held.discount_fen
        off = check(locked.held, use, now)
        usage = _used(locked, use, now, off, context.current())
        await coupons_sql.mark_used(
            conn,
            use.mall_id,
            use.coupon_id,
            at=now,
            store_id=use.store_id,
            use_request_id=use.use_request_id,
            order_amount_fen=use.order_amount_fen,
            discount_fen=off,
            transaction_id=use.transaction_id,
        )
        await add_events(conn, [usage.event])
    coupon = replace(locked.coupon, status="used", redeemed_at=now, redeemed_store_id=use.store_id)
    return coupon, off


class Redeemer:
    """Answers concurrent redemptions in batches (``kit.batching.Batcher``): up to ``workers``
    batches of at most ``max_batch`` at once, each worker keeping one pooled connection across
    the batches it drains."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 100, workers: int = 2) -> None:
        self._batcher: Batcher[tuple[Use, dict[str, str]], tuple[Coupon, int]] = Batcher(
            self._handle, session=pool.acquire, max_batch=max_batch, workers=workers
        )

    async def redeem(self, use: Use) -> tuple[Coupon, int]:
        return await self._batcher.submit((use, context.current()))

    def enqueue(self, use: Use) -> asyncio.Future[tuple[Coupon, int]]:
        """The future answer of ``use`` (a stream keeps many in flight without a task each)."""
        return self._batcher.enqueue((use, context.current()))

    @staticmethod
    async def _handle(
        conn: Connection, items: Sequence[tuple[Use, dict[str, str]]]
    ) -> list[tuple[Coupon, int] | BaseException]:
        return list(await redeem_batch(conn, [u for u, _ in items], [h for _, h in items]))
