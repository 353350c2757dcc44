"""kit.lifecycle: components run together, stop together, and a crash is not swallowed."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from kit.lifecycle import Component, every, run_components, sleep_or_stop, work_until_stopped
from kit.liveness import Heartbeats


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


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_named_polling_worker_is_named_stale_when_a_round_hangs() -> None:
    clock = _Clock()
    beats = Heartbeats(clock)
    stop = asyncio.Event()
    hang = asyncio.Event()
    rounds = 0

    async def step() -> int:
        nonlocal rounds
        rounds += 1
        if rounds == 3:
            await hang.wait()  # a round that never returns (a call without a timeout)
        return 0  # quiet: wait idle_s before the next round

    worker = asyncio.create_task(
        work_until_stopped(
            stop, step, idle_s=0.01, failed_event="t", heartbeat="job", heartbeats=beats
        )
    )
    for _ in range(500):  # the worker reaches its hanging round
        if rounds == 3:
            break
        await asyncio.sleep(0.01)
    assert rounds == 3
    assert beats.count("job") == 3  # at start and after each finished round

    clock.now += 29
    assert beats.stale(30) == []
    clock.now += 2  # past the max age and the 0.01 s wait it declared: the hang shows
    assert beats.stale(30) == ["job"]

    hang.set()
    stop.set()
    await asyncio.wait_for(worker, timeout=5)
    assert beats.stale(30) == []  # stopped on purpose: forgotten
    assert beats.count("job") == 0


async def test_a_polling_worker_is_not_stale_while_it_waits_out_a_long_idle() -> None:
    clock = _Clock()
    beats = Heartbeats(clock)
    stop = asyncio.Event()
    waiting = asyncio.Event()

    async def step() -> int:
        waiting.set()
        return 0

    worker = asyncio.create_task(
        work_until_stopped(
            stop, step, idle_s=3600, failed_event="t", heartbeat="hourly", heartbeats=beats
        )
    )
    await asyncio.wait_for(waiting.wait(), timeout=5)
    await asyncio.sleep(0)  # the round's beat, then its hour-long wait
    clock.now += 3000

    assert beats.stale(30) == []
    stop.set()
    await asyncio.wait_for(worker, timeout=5)


async def test_a_periodic_job_ticks_at_once_survives_an_outage_and_declares_its_wait() -> None:
    clock = _Clock()
    beats = Heartbeats(clock)
    stop = asyncio.Event()
    ticks: list[str] = []
    script = iter(["ok", "fails", "ok"])

    async def tick() -> None:
        what = next(script)
        ticks.append(what)
        if what == "fails":
            raise OSError("database away")
        if len(ticks) == 3:
            stop.set()  # asked to stop during the wait that follows

    job = asyncio.create_task(
        every(
            stop,
            0.01,
            tick,
            failed_event="t",
            transient=(OSError,),
            heartbeat="job",
            heartbeats=beats,
        )
    )
    await asyncio.wait_for(job, timeout=5)
    assert ticks == ["ok", "fails", "ok"]  # the outage was one missed tick, not the end
    assert beats.count("job") == 0  # forgotten once stopped

    # An hourly job waiting out its hour is not stale.
    ticked = asyncio.Event()
    stop = asyncio.Event()

    async def hourly() -> None:
        ticked.set()

    job = asyncio.create_task(
        every(stop, 3600, hourly, failed_event="t", heartbeat="hourly", heartbeats=beats)
    )
    await asyncio.wait_for(ticked.wait(), timeout=5)
    await asyncio.sleep(0)  # its beat after the tick, declaring the hour
    clock.now += 3000
    assert beats.stale(30) == []
    assert beats.count("hourly") == 2
    stop.set()
    await asyncio.wait_for(job, timeout=5)


async def test_a_periodic_job_lets_an_unexpected_error_through() -> None:
    async def tick() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await every(asyncio.Event(), 1, tick, failed_event="t", transient=(OSError,))
