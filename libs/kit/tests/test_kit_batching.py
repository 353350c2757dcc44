"""kit.batching.Batcher alone: answers in order, per-item failures, batch failures, sessions
kept across batches, no caller left waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest
from kit.batching import Batcher


async def test_concurrent_callers_are_answered_in_batches_each_with_its_own_answer() -> None:
    seen: list[list[int]] = []

    async def double(session: object, items: Sequence[int]) -> list[int | BaseException]:
        seen.append(list(items))
        await asyncio.sleep(0.01)
        return [ValueError(f"odd {i}") if i % 7 == 0 else i * 2 for i in items]

    batcher: Batcher[int, int] = Batcher(double, max_batch=10, workers=2)
    answers = await asyncio.gather(
        *(batcher.submit(i) for i in range(1, 51)), return_exceptions=True
    )

    for i, answer in zip(range(1, 51), answers, strict=True):
        if i % 7 == 0:
            assert isinstance(answer, ValueError)
            assert str(answer) == f"odd {i}"
        else:
            assert answer == i * 2
    assert sorted(i for batch in seen for i in batch) == list(range(1, 51))
    assert max(len(b) for b in seen) == 10
    assert batcher.batches == len(seen) < 50


async def test_an_idle_batcher_answers_one_at_once() -> None:
    async def echo(session: object, items: Sequence[str]) -> list[str | BaseException]:
        return list(items)

    batcher: Batcher[str, str] = Batcher(echo)
    assert await batcher.submit("a") == "a"
    assert await batcher.submit("b") == "b"
    assert (batcher.batches, batcher.items) == (2, 2)


async def test_a_failed_batch_fails_its_callers_only() -> None:
    calls = 0

    async def flaky(session: object, items: Sequence[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database away")
        return list(items)

    batcher: Batcher[int, int] = Batcher(flaky, max_batch=1, workers=1)
    first, second = await asyncio.gather(
        batcher.submit(1), batcher.submit(2), return_exceptions=True
    )
    assert isinstance(first, ConnectionError)
    assert second == 2


async def test_a_worker_keeps_its_session_across_batches_and_a_broken_one_is_reopened() -> None:
    opened: list[int] = []

    @contextlib.asynccontextmanager
    async def session() -> AsyncIterator[int]:
        opened.append(len(opened))
        yield opened[-1]

    async def tag(s: int, items: Sequence[int]) -> list[tuple[int, int] | BaseException]:
        await asyncio.sleep(0)
        if items[0] == 3:
            raise OSError("broken")
        return [(s, i) for i in items]

    batcher: Batcher[int, tuple[int, int]] = Batcher(tag, session=session, max_batch=1, workers=1)
    answers = await asyncio.gather(*(batcher.submit(i) for i in range(6)), return_exceptions=True)

    assert answers[:3] == [(0, 0), (0, 1), (0, 2)]  # one session for the whole drain
    assert isinstance(answers[3], OSError)
    assert answers[4:] == [(1, 4), (1, 5)]  # a fresh session after the failure
    assert opened == [0, 1]


async def test_no_session_means_every_waiting_caller_hears_why() -> None:
    class Unreachable(contextlib.AbstractAsyncContextManager[None]):
        async def __aenter__(self) -> None:
            raise ConnectionRefusedError("no database")

        async def __aexit__(self, *exc: object) -> None:
            return None

    def unreachable() -> Unreachable:
        return Unreachable()

    async def never(session: None, items: Sequence[int]) -> list[int | BaseException]:
        raise AssertionError("not called")

    batcher: Batcher[int, int] = Batcher(never, session=unreachable, workers=1)
    answers = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(a, ConnectionRefusedError) for a in answers)


def test_sizes_are_checked() -> None:
    async def echo(session: object, items: Sequence[int]) -> list[int | BaseException]:
        return list(items)

    with pytest.raises(ValueError, match="at least 1"):
        Batcher(echo, max_batch=0)


async def test_a_worker_that_finds_the_queue_taken_hands_no_empty_batch() -> None:
    sizes: list[int] = []

    async def handle(_: object, items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        return list(items)

    batcher: Batcher[int, int] = Batcher(handle, workers=2)
    # The second submit starts a second worker; the first worker, running first, takes both.
    answers = await asyncio.gather(batcher.submit(1), batcher.submit(2))

    assert list(answers) == [1, 2]
    assert sizes == [2]
    assert batcher.batches == 1
