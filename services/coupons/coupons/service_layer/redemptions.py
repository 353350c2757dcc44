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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import asyncpg
from eventbus.outbox import add_events
from kit import context
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


@dataclass
class _Waiting:
    use: Use
    headers: dict[str, str]
    answer: asyncio.Future[tuple[Coupon, int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Redeemer:
    """Batches concurrent redemptions: callers wait on a future; up to ``workers`` batches of at
    most ``max_batch`` run at once, each taking whatever is queued when it starts."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 100, workers: int = 2) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._workers = workers
        self._running = 0
        self._queue: list[_Waiting] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def redeem(self, use: Use) -> tuple[Coupon, int]:
        waiting = _Waiting(use, context.current())
        self._queue.append(waiting)
        self._kick()
        return await waiting.answer

    def _kick(self) -> None:
        """Start a drain if work waits and fewer than ``workers`` run."""
        if self._queue and self._running < self._workers:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        # One connection for the whole drain: a pool release costs a reset round trip.
        try:
            async with self._pool.acquire() as conn:
                while self._queue:
                    batch = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                    if not await self._answer(conn, batch):
                        break  # the next drain takes a fresh connection
        except Exception as exc:  # no connection at all: every waiting caller hears it
            for w in self._queue:
                if not w.answer.done():
                    w.answer.set_exception(exc)
            self._queue.clear()
        finally:
            self._running -= 1
            self._kick()  # a caller may have queued while this drain released its connection

    async def _answer(self, conn: Connection, batch: list[_Waiting]) -> bool:
        """Answer a batch; False when it failed as a whole (its callers hear why)."""
        try:
            answers = await redeem_batch(conn, [w.use for w in batch], [w.headers for w in batch])
        except Exception as exc:
            for w in batch:
                if not w.answer.done():
                    w.answer.set_exception(exc)
            return False
        for w, answer in zip(batch, answers, strict=True):
            if w.answer.done():  # the caller gave up (deadline, cancellation)
                continue
            if isinstance(answer, AppError):
                w.answer.set_exception(answer)
            else:
                w.answer.set_result(answer)
        return True
