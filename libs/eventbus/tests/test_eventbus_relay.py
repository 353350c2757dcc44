"""Outbox and relay against real PostgreSQL and NATS JetStream."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import eventbus
import pytest
import structlog
import structlog.testing
from eventbus.outbox import OutgoingEvent, add_events, event
from eventbus.relay import HEARTBEAT_NAME, OutboxRelay
from eventbus.streams import ensure_streams
from kit import context
from kit.db import open_pool
from kit.liveness import Heartbeats
from kit.migrations import migrate
from mall.points.v1 import events_pb2
from mall_testing.plugin import FreshDatabase, Nats
from nats.js.api import RawStreamMsg
from nats.js.errors import NoStreamResponseError

SUBJECT = "points.points.credited"


@pytest.fixture
async def pool(fresh_database: FreshDatabase) -> AsyncIterator[asyncpg.Pool]:
    dsn = await fresh_database("eventbus_relay")
    await migrate(dsn, [eventbus.MIGRATIONS])
    async with open_pool(dsn, min_size=1, max_size=4) as pool:
        yield pool


def _credited(uid: str, n: int, *, subject: str = SUBJECT) -> OutgoingEvent:
    message = events_pb2.PointsCredited(
        event_id=f"{uid}-{n}", mall_id=f"mall-{uid}", member_id=f"member-{uid}", points=n
    )
    return event(subject, message, mall_id=f"mall-{uid}", event_id=f"{uid}-{n}")


async def _queue(pool: asyncpg.Pool, events: list[OutgoingEvent]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await add_events(conn, events)


async def _outbox(pool: asyncpg.Pool) -> list[str]:
    async with pool.acquire() as conn:
        return [r["event_id"] for r in await conn.fetch("SELECT event_id FROM outbox ORDER BY seq")]


async def _stream(nats: Nats, name: str = "POINTS") -> list[RawStreamMsg]:
    state = (await nats.js.stream_info(name)).state
    if state.messages == 0:
        return []
    return [await nats.js.get_msg(name, seq) for seq in range(state.first_seq, state.last_seq + 1)]


async def _eventually(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):  # up to 10 s
        if await probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_events_of_a_rolled_back_transaction_are_never_published(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, "POINTS")

    async def change_that_fails() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await add_events(conn, [_credited(unique_id, 1), _credited(unique_id, 2)])
            raise ZeroDivisionError("the state change fails after the events were queued")

    with pytest.raises(ZeroDivisionError):
        await change_that_fails()

    assert await _outbox(pool) == []
    assert await OutboxRelay(pool, jetstream.js).publish_pending() == 0
    assert await _stream(jetstream) == []


async def test_committed_events_are_published_with_their_id_and_context(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, "POINTS")
    with context.bound(correlation_id=f"corr-{unique_id}", tenant_id=f"tenant-{unique_id}"):
        events = [_credited(unique_id, n) for n in (1, 2)]
        raw = events_pb2.PointsCredited(event_id=f"{unique_id}-3").SerializeToString()
        events.append(OutgoingEvent(SUBJECT, raw, f"mall-{unique_id}", f"{unique_id}-3"))
    await _queue(pool, events)
    assert await _outbox(pool) == [e.event_id for e in events]

    relay = OutboxRelay(pool, jetstream.js)
    assert await relay.publish_pending() == 3

    published = {m.headers["Nats-Msg-Id"]: m for m in await _stream(jetstream) if m.headers}
    assert sorted(published) == sorted(e.event_id for e in events)
    for sent in events:
        msg = published[sent.event_id]
        assert msg.subject == SUBJECT
        assert msg.headers is not None
        assert msg.headers["x-correlation-id"] == f"corr-{unique_id}"
        assert msg.headers["x-tenant-id"] == f"tenant-{unique_id}"
        assert msg.headers["x-mall-id"] == f"mall-{unique_id}"
        assert msg.data is not None
        decoded = events_pb2.PointsCredited.FromString(msg.data)
        assert decoded.event_id == sent.event_id
    assert await _outbox(pool) == []
    assert relay.published == 3


async def test_a_republished_event_is_stored_once_and_still_leaves_the_outbox(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, "POINTS")
    relay = OutboxRelay(pool, jetstream.js)
    credited = _credited(unique_id, 1)
    await _queue(pool, [credited])
    assert await relay.publish_pending() == 1

    # A relay that crashed after JetStream's ack but before its DELETE committed: the same
    # row is back in the outbox and gets published again.
    await _queue(pool, [credited])
    assert await relay.publish_pending() == 1  # the duplicate ack counts as success

    assert await _outbox(pool) == []
    [stored] = await _stream(jetstream)
    assert stored.headers is not None
    assert stored.headers["Nats-Msg-Id"] == credited.event_id


async def test_events_wait_in_the_outbox_until_their_stream_exists(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    relay = OutboxRelay(pool, jetstream.js)
    events = [_credited(unique_id, 1), _credited(unique_id, 2)]
    await _queue(pool, events)

    with pytest.raises(NoStreamResponseError):
        await relay.publish_pending()
    assert await _outbox(pool) == [e.event_id for e in events]

    await ensure_streams(jetstream.js, "POINTS")
    assert await relay.publish_pending() == 2
    assert await _outbox(pool) == []
    assert len(await _stream(jetstream)) == 2


async def test_a_partly_failed_batch_keeps_only_the_failed_events(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, "POINTS")
    good = [_credited(unique_id, 1), _credited(unique_id, 3)]
    orphan = _credited(unique_id, 2, subject=f"nowhere.{unique_id}.happened")
    await _queue(pool, [good[0], orphan, good[1]])

    with pytest.raises(NoStreamResponseError):
        await OutboxRelay(pool, jetstream.js).publish_pending()

    assert await _outbox(pool) == [orphan.event_id]
    stored = await _stream(jetstream)
    assert sorted(m.headers["Nats-Msg-Id"] for m in stored if m.headers) == sorted(
        e.event_id for e in good
    )


async def test_the_running_relay_is_woken_by_commits(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, "POINTS")
    # Polling is far slower than the wait below: only the NOTIFY can make this pass.
    relay = OutboxRelay(pool, jetstream.js, poll_interval_s=60)
    await _queue(pool, [_credited(unique_id, 1)])
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await _eventually(lambda: asyncio.sleep(0, relay.published == 1), "the first pass")
        await _queue(pool, [_credited(unique_id, 2), _credited(unique_id, 3)])

        async def all_published() -> bool:
            return len(await _stream(jetstream)) == 3 and not await _outbox(pool)

        await _eventually(all_published, "the relay to publish the new commit")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert relay.published == 3


async def test_an_idle_relay_keeps_beating_and_is_forgotten_once_stopped(
    pool: asyncpg.Pool, jetstream: Nats
) -> None:
    ticks = itertools.count()
    beats = Heartbeats(clock=lambda: float(next(ticks)))  # each beat a later "time"
    relay = OutboxRelay(pool, jetstream.js, poll_interval_s=0.05, heartbeats=beats)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:

        async def beating() -> bool:
            assert not task.done(), task.result()
            return beats.count(HEARTBEAT_NAME) >= 2

        await _eventually(beating, "the first beats")
        count, last = beats.count(HEARTBEAT_NAME), beats.last(HEARTBEAT_NAME)
        assert last is not None

        async def beating_on() -> bool:  # an empty outbox: only the poll wakes it
            now = beats.last(HEARTBEAT_NAME)
            return beats.count(HEARTBEAT_NAME) >= count + 3 and now is not None and now > last

        await _eventually(beating_on, "more beats while idle")
        assert beats.stale(max_age_s=1000) == []
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert relay.published == 0
    assert beats.count(HEARTBEAT_NAME) == 0  # stopped on purpose: not expected to beat


async def test_the_running_relay_outlasts_a_missing_stream(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    relay = OutboxRelay(pool, jetstream.js, poll_interval_s=0.05, max_backoff_s=0.2)
    await _queue(pool, [_credited(unique_id, 1)])
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(relay.run(stop))
        try:

            async def failed_twice() -> bool:
                failures = [e for e in logs if e["event"] == "outbox_publish_failed"]
                return len(failures) >= 2

            await _eventually(failed_twice, "the relay to fail and retry")
            assert not task.done()
            assert await _outbox(pool) == [f"{unique_id}-1"]

            await ensure_streams(jetstream.js, "POINTS")

            async def published() -> bool:
                return not await _outbox(pool)

            await _eventually(published, "the relay to publish once the stream exists")
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)
    assert len(await _stream(jetstream)) == 1


async def _listening_backends(pool: asyncpg.Pool) -> list[int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
            " AND pid <> pg_backend_pid()"
        )
    return [r["pid"] for r in rows]


async def test_the_running_relay_listens_again_after_losing_its_connection(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    """What a PostgreSQL restart does to the LISTEN connection: the relay notices the loss,
    takes a new connection and is woken by the next commit as before."""
    await ensure_streams(jetstream.js, "POINTS")
    relay = OutboxRelay(pool, jetstream.js, poll_interval_s=60)  # only a NOTIFY wakes it
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        first: list[int] = []

        async def listening() -> bool:
            first[:] = await _listening_backends(pool)
            return len(first) == 1

        await _eventually(listening, "the relay to LISTEN")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", first[0])

        async def listening_again() -> bool:
            now = await _listening_backends(pool)
            return len(now) == 1 and now != first

        await _eventually(listening_again, "the relay to LISTEN on a new connection")
        await _queue(pool, [_credited(unique_id, 1)])

        async def published() -> bool:
            return len(await _stream(jetstream)) == 1 and not await _outbox(pool)

        await _eventually(published, "the relay to publish the commit after the loss")
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
