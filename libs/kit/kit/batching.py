"""Answer concurrent single requests in batches: group commit inside one process.

Callers ``await batcher.submit(item)`` one by one (or hold ``enqueue(item)``'s future); the
batcher hands whatever is waiting when a worker is free to ``handle`` as one list (at most
``max_batch``), and gives each caller its own answer. An idle batcher runs a batch of one at
once, so batching adds no wait; under load, batches grow by themselves. Examples: the gateway
coalescing concurrent HTTP claims into one ClaimCoupons call; coupons answering concurrent
redemptions (RedeemCoupon calls and RedeemCoupons streams) with one statement.

``handle`` returns one answer per item, in order: a value, or an exception for that caller
alone. If ``handle`` raises, every caller of that batch gets the exception. With ``session``
(an async context manager factory, e.g. ``pool.acquire``), a worker opens one session and
keeps it across the batches it drains (a pooled connection's release costs a round trip);
``handle`` then receives it first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Handle = Callable[[Any, Sequence[T]], Awaitable[Sequence[R | BaseException]]]


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    answer: asyncio.Future[R] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Batcher(Generic[T, R]):
    def __init__(
        self,
        handle: Handle[T, R],
        *,
        session: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None,
        max_batch: int = 100,
        workers: int = 2,
    ) -> None:
        if max_batch < 1 or workers < 1:
            raise ValueError("max_batch and workers must be at least 1")
        self._handle = handle
        self._session = session or (lambda: contextlib.nullcontext(None))
        self._max_batch = max_batch
        self._workers = workers
        self._running = 0
        self._queue: list[_Waiting[T, R]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: Batches handled and items answered (tests, metrics).
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        return await self.enqueue(item)

    def enqueue(self, item: T) -> asyncio.Future[R]:
        """Queue ``item`` and return the future of its answer, for a caller that has many in
        flight and would rather not spend a task on each (a stream answering as they come)."""
        waiting: _Waiting[T, R] = _Waiting(item)
        self._queue.append(waiting)
        self._kick()
        return waiting.answer

    def _kick(self) -> None:
        """Start a worker if work waits and fewer than ``workers`` run."""
        if self._queue and self._running < self._workers:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        try:
            async with self._session() as session:
                while self._queue:
                    await asyncio.sleep(0)  # callers already on their way join this batch
                    if not self._queue:
                        break  # another worker took them meanwhile
                    batch = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                    if not await self._answer(session, batch):
                        break  # the next worker opens a fresh session
        except Exception as exc:  # no session at all (e.g. no connection): callers hear why
            waiting, self._queue = self._queue, []
            for w in waiting:
                if not w.answer.done():
                    w.answer.set_exception(exc)
        finally:
            self._running -= 1
            self._kick()  # a caller may have queued while this worker closed its session

    async def _answer(self, session: Any, batch: list[_Waiting[T, R]]) -> bool:
        """Answer one batch; False when it failed as a whole."""
        self.batches += 1
        self.items += len(batch)
        try:
            answers = await self._handle(session, [w.item for w in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"handle answered {len(answers)} of {len(batch)} items")
        except Exception as exc:
            for w in batch:
                if not w.answer.done():
                    w.answer.set_exception(exc)
            return False
        for w, answer in zip(batch, answers, strict=True):
            if w.answer.done():  # the caller gave up (deadline, cancellation)
                continue
            if isinstance(answer, BaseException):
                w.answer.set_exception(answer)
            else:
                w.answer.set_result(answer)
        return True
