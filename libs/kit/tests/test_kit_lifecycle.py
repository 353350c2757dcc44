"""kit.lifecycle: components run together, stop together, and a crash is not swallowed."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from kit.lifecycle import Component, run_components, sleep_or_stop, work_until_stopped


async def test_a_crash_stops_every_other_component_and_is_raised() -> None:
    started = asyncio.Event()
    cleaned_up: list[str] = []

    async def worker(stop: asyncio.Event) -> None:
        started.set()
        try:
            await stop.wait()
        finally:
            cleaned_up.append("worker")

    async def crasher(stop: asyncio.Event) -> None:
        await started.wait()
        raise RuntimeError("consumer lost its database")

    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(run_components([worker, crasher]), timeout=10)

    assert raised.group_contains(RuntimeError, match="consumer lost its database")
    assert cleaned_up == ["worker"]


async def test_the_shared_stop_event_ends_every_component() -> None:
    stop = asyncio.Event()
    finished: list[str] = []

    def component(name: str) -> Component:
        async def run(stop: asyncio.Event) -> None:
            await stop.wait()
            finished.append(name)

        return run

    async def stopper(stop: asyncio.Event) -> None:
        stop.set()

    relay, consumer = component("relay"), component("consumer")
    await asyncio.wait_for(run_components([relay, consumer, stopper], stop), timeout=10)

    assert sorted(finished) == ["consumer", "relay"]


async def test_sigterm_stops_the_components_gracefully() -> None:
    drained: list[str] = []

    async def server(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # what Kubernetes sends
        await stop.wait()
        drained.append("server")

    await asyncio.wait_for(run_components([server]), timeout=10)

    assert drained == ["server"]
    # The handlers are removed again: the loop no longer owns SIGTERM.
    assert asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM) is False


async def test_sleep_or_stop_tells_whether_it_was_asked_to_stop() -> None:
    stop = asyncio.Event()
    assert await sleep_or_stop(stop, 0.01) is False
    stop.set()
    assert await sleep_or_stop(stop, 10) is True


async def test_a_role_with_nothing_to_run_lives_until_stopped() -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_components([], stop))
    await asyncio.sleep(0.05)
    assert not task.done()  # an orchestrator must not see an empty role as a crash loop

    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_polling_worker_drains_retries_and_stops() -> None:
    """Full rounds run back to back, a transient failure is retried, a quiet round waits."""
    stop = asyncio.Event()
    rounds: list[str] = []
    script = iter(["full", "full", "fails", "full", "quiet"])

    async def step() -> int:
        what = next(script)
        rounds.append(what)
        if what == "fails":
            raise OSError("database away")
        if what == "quiet":
            stop.set()  # asked to stop during the idle wait that follows
            return 0
        return 10

    await asyncio.wait_for(
        work_until_stopped(stop, step, idle_s=60, full=10, failed_event="t", transient=(OSError,)),
        timeout=5,  # the 60 s idle wait is cut short by the stop
    )

    assert rounds == ["full", "full", "fails", "full", "quiet"]


async def test_a_polling_worker_lets_an_unexpected_error_through() -> None:
    async def step() -> int:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await work_until_stopped(
            asyncio.Event(), step, idle_s=1, failed_event="t", transient=(OSError,)
        )
