"""kit.liveness: heartbeats on an injected clock, and the probe server as a real component
on a real port, queried over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from kit.liveness import Heartbeats, ProbeServer
from kit.metrics import OUTBOX_PUBLISHED
from mall_testing.embedded import free_port
from prometheus_client import CONTENT_TYPE_LATEST


class _Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fresh_beats_are_not_stale() -> None:
    clock = _Clock()
    beats = Heartbeats(clock)
    beats.beat("relay")
    beats.beat("consumer")
    clock.now += 30

    assert beats.stale(30) == []
    assert (beats.count("relay"), beats.last("relay")) == (1, 1000.0)


def test_a_component_that_stopped_beating_is_named_once_past_the_max_age() -> None:
    clock = _Clock()
    beats = Heartbeats(clock)
    beats.beat("relay")
    beats.beat("consumer")
    clock.now += 31
    beats.beat("consumer")

    assert beats.stale(30) == ["relay"]
    assert beats.count("consumer") == 2


def test_a_declared_pause_does_not_count_against_a_component() -> None:
    """A polling worker about to wait 5 minutes says so; only time beyond that counts."""
    clock = _Clock()
    beats = Heartbeats(clock)
    beats.beat("hourly-job", pausing_s=300)
    clock.now += 320

    assert beats.stale(30) == []
    clock.now += 11
    assert beats.stale(30) == ["hourly-job"]


def test_a_forgotten_component_is_never_stale() -> None:
    clock = _Clock()
    beats = Heartbeats(clock)
    beats.beat("relay")
    beats.forget("relay")
    clock.now += 3600

    assert beats.stale(30) == []
    assert (beats.count("relay"), beats.last("relay")) == (0, None)


@contextlib.asynccontextmanager
async def _probes(beats: Heartbeats, max_age_s: float) -> AsyncIterator[str]:
    """The real component on a free port; yields its base URL once it listens."""
    server = ProbeServer(free_port(), host="127.0.0.1", max_age_s=max_age_s, heartbeats=beats)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        for _ in range(500):  # bounded: until it listens
            if task.done():
                task.result()  # a failed bind: show why
            if server.bound_port:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the probe server never listened")
        yield f"http://127.0.0.1:{server.bound_port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert server.bound_port is None  # stopped and closed


async def test_metrics_are_prometheus_text_from_the_default_registry() -> None:
    OUTBOX_PUBLISHED.inc(0)  # kit.metrics registers it on import; the probes serve it
    async with (
        _probes(Heartbeats(_Clock()), 30) as url,
        aiohttp.ClientSession() as http,
        http.get(f"{url}/metrics") as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await resp.text()
    assert "# TYPE mall_outbox_published_total counter" in text
    assert "mall_outbox_published_total " in text


async def test_livez_follows_the_heartbeats() -> None:
    clock = _Clock()
    beats = Heartbeats(clock)
    beats.beat("outbox-relay")
    beats.beat("points-credit")
    async with _probes(beats, 30) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/livez") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})

        clock.now += 31
        beats.beat("points-credit")
        async with http.get(f"{url}/livez") as resp:
            assert (resp.status, await resp.json()) == (
                503,
                {"status": "stale", "stale": ["outbox-relay"]},
            )

        beats.beat("outbox-relay")  # progress again: alive again
        async with http.get(f"{url}/livez") as resp:
            assert resp.status == 200


async def test_livez_is_ok_with_nothing_registered() -> None:
    async with (
        _probes(Heartbeats(_Clock()), 30) as url,
        aiohttp.ClientSession() as http,
        http.get(f"{url}/livez") as resp,
    ):
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
