"""Run a process's components until SIGTERM/SIGINT, then stop them in order.

A component is ``async def component(stop: asyncio.Event) -> None``: it works until ``stop``
is set, then finishes in-flight work and returns. If one component crashes, the others are
told to stop and the process exits non-zero so that its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import structlog

from kit.liveness import HEARTBEATS, Heartbeats

log = structlog.get_logger(__name__)

Component = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


async def run_components(
    components: Sequence[Component], stop: asyncio.Event | None = None
) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def guarded(component: Component) -> None:
        try:
            await component(stop)
        except BaseException:
            stop.set()
            raise

    if not components:  # a role with nothing to do yet still lives until told to stop,
        components = [_idle]  # so an orchestrator does not see a crash loop

    try:
        async with asyncio.TaskGroup() as tg:
            for component in components:
                tg.create_task(guarded(component), name=getattr(component, "__name__", None))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")


async def _idle(stop: asyncio.Event) -> None:
    await stop.wait()


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if asked to stop meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


def _beat(heartbeats: Heartbeats, name: str | None, pausing_s: float = 0.0) -> None:
    if name is not None:
        heartbeats.beat(name, pausing_s=pausing_s)


async def every(
    stop: asyncio.Event,
    interval_s: float,
    tick: Callable[[], Awaitable[None]],
    *,
    failed_event: str,
    transient: tuple[type[BaseException], ...] = (Exception,),
    heartbeat: str | None = None,
    heartbeats: Heartbeats = HEARTBEATS,
) -> None:
    """The loop of a periodic job: ``tick`` now, then every ``interval_s`` until stopped. A
    ``transient`` failure (the database away) is logged as ``failed_event`` and the job tries
    again at the next tick. With ``heartbeat`` it beats after every tick, declaring the wait
    that follows, so /livez names it only if a tick hangs."""
    try:
        while True:
            _beat(heartbeats, heartbeat)
            try:
                await tick()
            except transient as exc:
                log.warning(failed_event, error=repr(exc), retry_in_s=interval_s)
            _beat(heartbeats, heartbeat, pausing_s=interval_s)
            if await sleep_or_stop(stop, interval_s):
                return
    finally:
        if heartbeat is not None:
            heartbeats.forget(heartbeat)


async def work_until_stopped(
    stop: asyncio.Event,
    step: Callable[[], Awaitable[int]],
    *,
    idle_s: float,
    full: int = 1,
    failed_event: str,
    transient: tuple[type[BaseException], ...] = (Exception,),
    max_backoff_s: float = 10.0,
    heartbeat: str | None = None,
    heartbeats: Heartbeats = HEARTBEATS,
) -> None:
    """The loop of a polling worker: ``step`` does one round and says how much it handled.
    At least ``full`` handled: go again at once (more may be due); fewer: wait ``idle_s``. A
    ``transient`` failure (the database away) is logged as ``failed_event`` and retried,
    backing off to ``max_backoff_s``; the worker never gives up. With ``heartbeat`` the worker
    beats under that name after every round (its waits declared), so /livez names it if one
    round hangs."""
    backoff = 0.1
    _beat(heartbeats, heartbeat)
    try:
        while not stop.is_set():
            try:
                handled = await step()
                backoff = 0.1
            except transient as exc:
                log.warning(failed_event, error=repr(exc), retry_in_s=backoff)
                _beat(heartbeats, heartbeat, pausing_s=backoff)
                if await sleep_or_stop(stop, backoff):
                    return
                backoff = min(backoff * 2, max_backoff_s)
                continue
            if handled >= full:
                _beat(heartbeats, heartbeat)
                continue
            _beat(heartbeats, heartbeat, pausing_s=idle_s)
            if await sleep_or_stop(stop, idle_s):
                return
    finally:
        if heartbeat is not None:
            heartbeats.forget(heartbeat)
