"""Consumer, inbox and dead letters against real PostgreSQL and NATS JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import eventbus
import pytest
from eventbus.consumer import Consumer, Delivery, dead_letter, list_dead_letters
from eventbus.streams import ensure_streams
from kit import context
from kit.db import Connection, open_pool
from kit.errors import InvalidInput
from kit.liveness import Heartbeats
from kit.migrations import migrate
from mall.points.v1 import events_pb2
from mall_testing.plugin import FreshDatabase, Nats
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

STREAM = "POINTS"


@pytest.fixture
async def pool(fresh_database: FreshDatabase) -> AsyncIterator[asyncpg.Pool]:
    dsn = await fresh_database("eventbus_consumer")
    await migrate(dsn, [eventbus.MIGRATIONS])
    async with open_pool(dsn, min_size=1, max_size=6) as pool:
        await pool.execute(
            """CREATE TABLE effects (
                   consumer text NOT NULL,
                   event_id text NOT NULL,
                   correlation_id text,
                   bound_correlation_id text,
                   num_delivered integer NOT NULL,
                   points bigint NOT NULL)"""
        )
        yield pool


class _Handler:
    """A consumer handler whose effect is a row written in the consumer's transaction."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        #: event id → the delivery attempt that first succeeds (transient failures before it).
        self.fail_before_delivery: dict[str, int] = {}
        #: event ids refused as invalid (a bug in the handler, fixed later).
        self.refused: set[str] = set()
        #: event id → num_delivered of every attempt, failed or not.
        self.attempts: defaultdict[str, list[int]] = defaultdict(list)

    async def __call__(self, conn: Connection, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self.attempts[d.event_id].append(d.num_delivered)
            credited = d.decode(events_pb2.PointsCredited)  # PoisonMessage when undecodable
            if credited.points < 0 or d.event_id in self.refused:
                raise InvalidInput("negative_points", "points must not be negative")
            if d.num_delivered < self.fail_before_delivery.get(d.event_id, 0):
                raise ConnectionError("connection reset by peer")
            await conn.execute(
                "INSERT INTO effects VALUES ($1, $2, $3, $4, $5, $6)",
                self.consumer,
                d.event_id,
                d.context.get("x-correlation-id"),
                context.correlation_id(),
                d.num_delivered,
                credited.points,
            )


def _consumer(
    pool: asyncpg.Pool, js: JetStreamContext, uid: str, **options: Any
) -> tuple[Consumer, _Handler]:
    name = f"test-{uid}"
    handler = _Handler(name)
    options.setdefault("retry_delays_s", (0.05,))
    consumer = Consumer(
        pool,
        js,
        name=name,
        stream=STREAM,
        subject=f"points.t{uid}.credited",
        handler=handler,
        **options,
    )
    return consumer, handler


def _payload(points: int) -> bytes:
    return events_pb2.PointsCredited(points=points).SerializeToString()


async def _publish(js: JetStreamContext, subject: str, event_id: str, data: bytes) -> int:
    headers = {"Nats-Msg-Id": event_id, "x-correlation-id": f"corr-{event_id}"}
    ack = await js.publish(subject, data, headers=headers)
    assert not ack.duplicate
    return ack.seq


@contextlib.asynccontextmanager
async def _running(consumer: Consumer) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def _eventually(
    probe: Callable[[], Awaitable[bool]], what: str, task: asyncio.Task[None]
) -> None:
    for _ in range(200):  # up to 10 s
        if task.done():
            task.result()  # a crashed consumer: show why
            raise AssertionError(f"the consumer stopped while waiting for {what}")
        if await probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _effects(pool: asyncpg.Pool, consumer: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM effects WHERE consumer = $1 ORDER BY event_id", consumer)


async def _dead_letters(pool: asyncpg.Pool, consumer: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM dead_letters WHERE consumer = $1 ORDER BY id", consumer)


async def _settled(js: JetStreamContext, consumer: Consumer, last_seq: int) -> bool:
    """Everything up to ``last_seq`` delivered and acknowledged (or terminated)."""
    try:
        info = await js.consumer_info(consumer.stream, consumer.name)
    except NotFoundError:
        return False  # not created yet
    return bool(
        info.ack_floor.stream_seq == last_seq
        and info.num_ack_pending == 0
        and info.num_pending == 0
    )


async def test_messages_are_handled_once_acked_and_carry_their_correlation(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, STREAM)
    consumer, _ = _consumer(pool, jetstream.js, unique_id)
    ids = [f"{unique_id}-{n}" for n in range(3)]
    for n, event_id in enumerate(ids):
        last = await _publish(jetstream.js, consumer.subject, event_id, _payload(n))

    async with _running(consumer) as task:
        await _eventually(lambda: _settled(jetstream.js, consumer, last), "acks", task)

    effects = await _effects(pool, consumer.name)
    assert [(r["event_id"], r["points"]) for r in effects] == [(i, n) for n, i in enumerate(ids)]
    assert [r["correlation_id"] for r in effects] == [f"corr-{i}" for i in ids]
    # The log context is bound per batch (from its first message): one of this batch's ids.
    assert {r["bound_correlation_id"] for r in effects} <= {f"corr-{i}" for i in ids}
    inbox = await pool.fetch("SELECT event_id FROM inbox WHERE consumer = $1", consumer.name)
    assert sorted(r["event_id"] for r in inbox) == ids


async def test_a_lone_message_is_handled_without_waiting_for_its_batch_to_fill(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    """A trickle (one payment, then quiet): the consumer asks for up to 200 and may wait 60 s
    for them, yet hands a lone message over at once — within _eventually's 10 s — instead of
    holding it until the batch fills or the wait ends (a latency a trickle would pay per hop)."""
    await ensure_streams(jetstream.js, STREAM)
    consumer, _ = _consumer(pool, jetstream.js, unique_id, batch_size=200, fetch_wait_s=60)

    await consumer.ensure()
    task = asyncio.create_task(consumer.run(asyncio.Event()))
    try:
        await asyncio.sleep(0.2)  # the consumer is waiting on an empty stream
        first = await _publish(jetstream.js, consumer.subject, f"{unique_id}-1", _payload(1))
        await _eventually(lambda: _settled(jetstream.js, consumer, first), "the lone one", task)
        # And again after the quiet: every lone message, not only the first.
        second = await _publish(jetstream.js, consumer.subject, f"{unique_id}-2", _payload(2))
        await _eventually(lambda: _settled(jetstream.js, consumer, second), "the next", task)
    finally:  # a stop would wait out the 60 s fetch: cancel instead
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert [r["points"] for r in await _effects(pool, consumer.name)] == [1, 2]


async def test_a_busy_consumer_lets_the_next_batch_gather_before_it_fetches_again(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    """Group commit under moderate load: after a partial batch the consumer lingers, so what
    arrives meanwhile is handled in one transaction rather than one each. The lone first
    message is still handled at once (the linger comes after a batch, never before one)."""
    await ensure_streams(jetstream.js, STREAM)
    handler = _Handler(f"test-{unique_id}")
    batches: list[list[str]] = []

    async def recording(conn: Connection, deliveries: Sequence[Delivery]) -> None:
        batches.append([d.event_id for d in deliveries])
        await handler(conn, deliveries)

    consumer = Consumer(
        pool,
        jetstream.js,
        name=handler.consumer,
        stream=STREAM,
        subject=f"points.t{unique_id}.credited",
        handler=recording,
        linger_s=2.0,
    )
    async with _running(consumer) as task:
        first = await _publish(jetstream.js, consumer.subject, f"{unique_id}-0", _payload(0))
        await _eventually(lambda: _settled(jetstream.js, consumer, first), "the first", task)
        # The consumer now lingers: these five arrive one by one while it does.
        for n in range(1, 6):
            last = await _publish(jetstream.js, consumer.subject, f"{unique_id}-{n}", _payload(n))
        await _eventually(lambda: _settled(jetstream.js, consumer, last), "the five", task)

    assert batches == [[f"{unique_id}-0"], [f"{unique_id}-{n}" for n in range(1, 6)]]
    assert len(await _effects(pool, consumer.name)) == 6


async def test_an_idle_consumer_keeps_beating_and_is_forgotten_once_stopped(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, STREAM)
    ticks = itertools.count()
    beats = Heartbeats(clock=lambda: float(next(ticks)))  # each beat a later "time"
    consumer, _ = _consumer(pool, jetstream.js, unique_id, fetch_wait_s=0.05, heartbeats=beats)

    async with _running(consumer) as task:

        async def beating() -> bool:
            return beats.count(consumer.name) >= 2

        await _eventually(beating, "the first beats", task)
        count, last = beats.count(consumer.name), beats.last(consumer.name)
        assert last is not None

        async def beating_on() -> bool:  # nothing to fetch: only the empty fetches go round
            now = beats.last(consumer.name)
            return beats.count(consumer.name) >= count + 3 and now is not None and now > last

        await _eventually(beating_on, "more beats while idle", task)
        assert beats.stale(max_age_s=1000) == []

    assert beats.count(consumer.name) == 0  # stopped on purpose: not expected to beat


async def test_a_redelivered_event_id_has_one_effect_across_batches_and_restarts(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    # A stream that forgets message ids after 100 ms, so that one event id can be stored
    # several times (as after a producer's retry beyond the window): only the inbox stops it.
    stream = f"SHORTDEDUP{unique_id}".upper()
    subject = f"dedup.{unique_id}.credited"
    await jetstream.js.add_stream(
        StreamConfig(name=stream, subjects=[f"dedup.{unique_id}.>"], duplicate_window=0.1)
    )
    name = f"test-{unique_id}"
    event_id = f"{unique_id}-once"

    async def store_again() -> int:
        for _ in range(100):
            ack = await jetstream.js.publish(
                subject, _payload(5), headers={"Nats-Msg-Id": event_id}
            )
            if not ack.duplicate:
                return ack.seq
            await asyncio.sleep(0.05)
        raise AssertionError("the stream kept calling the message a duplicate")

    handler = _Handler(name)
    options: dict[str, Any] = {"name": name, "stream": stream, "subject": subject}
    first = Consumer(pool, jetstream.js, handler=handler, **options)
    await store_again()
    last = await store_again()  # both waiting: handled in one batch
    async with _running(first) as task:
        await _eventually(lambda: _settled(jetstream.js, first, last), "acks", task)

    last = await store_again()  # redelivered to a restarted process
    second = Consumer(pool, jetstream.js, handler=handler, **options)
    async with _running(second) as task:
        await _eventually(lambda: _settled(jetstream.js, second, last), "acks", task)

    assert last == 3
    assert [r["event_id"] for r in await _effects(pool, name)] == [event_id]
    assert handler.attempts[event_id] == [1]  # the handler never even saw the repeats


@pytest.mark.parametrize(
    ("poison", "error"),
    [
        pytest.param(b"\xff\xff\xff", "PoisonMessage(", id="undecodable"),
        pytest.param(
            events_pb2.PointsCredited(points=-1).SerializeToString(),
            "negative_points: points must not be negative",
            id="invalid",
        ),
    ],
)
async def test_a_poison_message_is_dead_lettered_and_the_stream_keeps_flowing(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str, poison: bytes, error: str
) -> None:
    await ensure_streams(jetstream.js, STREAM)
    consumer, handler = _consumer(pool, jetstream.js, unique_id)
    before = [f"{unique_id}-a{n}" for n in range(4)]
    after = [f"{unique_id}-b{n}" for n in range(4)]
    later = [f"{unique_id}-c{n}" for n in range(2)]
    poison_id = f"{unique_id}-poison"
    for event_id in before:
        await _publish(jetstream.js, consumer.subject, event_id, _payload(1))
    poison_seq = await _publish(jetstream.js, consumer.subject, poison_id, poison)
    for event_id in after:
        last = await _publish(jetstream.js, consumer.subject, event_id, _payload(1))

    async with _running(consumer) as task:  # all nine are waiting: one batch
        await _eventually(lambda: _settled(jetstream.js, consumer, last), "the batch", task)
        for event_id in later:
            last = await _publish(jetstream.js, consumer.subject, event_id, _payload(1))
        await _eventually(lambda: _settled(jetstream.js, consumer, last), "later ones", task)

    effects = [r["event_id"] for r in await _effects(pool, consumer.name)]
    assert effects == sorted(before + after + later)  # each good message exactly once
    [dead] = await _dead_letters(pool, consumer.name)
    assert dead["event_id"] == poison_id
    assert dead["subject"] == consumer.subject
    assert dead["stream_seq"] == poison_seq
    assert dead["payload"] == poison
    assert dead["deliveries"] == 1
    assert json.loads(dead["headers"])["x-correlation-id"] == f"corr-{poison_id}"
    assert dead["error"].startswith(error)
    assert dead["replayed_at"] is None
    info = await jetstream.js.consumer_info(STREAM, consumer.name)
    assert info.num_redelivered == 0  # terminated, not retried
    assert set(handler.attempts[poison_id]) == {1}
    # What ops see: the dead letter alert's counter and the settled-message counters.
    assert REGISTRY.get_sample_value("mall_dead_letters_total", {"consumer": consumer.name}) == 1
    handled = REGISTRY.get_sample_value(
        "mall_consumer_messages_total", {"consumer": consumer.name, "outcome": "handled"}
    )
    assert handled == len(before + after + later)


async def test_a_transient_failure_is_retried_and_handled_once(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, STREAM)
    consumer, handler = _consumer(pool, jetstream.js, unique_id)
    flaky, steady = f"{unique_id}-flaky", f"{unique_id}-steady"
    handler.fail_before_delivery[flaky] = 2  # the first delivery fails, the second works
    await _publish(jetstream.js, consumer.subject, flaky, _payload(3))
    last = await _publish(jetstream.js, consumer.subject, steady, _payload(4))

    async with _running(consumer) as task:
        await _eventually(lambda: _settled(jetstream.js, consumer, last), "acks", task)

    effects = {r["event_id"]: r["num_delivered"] for r in await _effects(pool, consumer.name)}
    assert effects == {flaky: 2, steady: 1}  # nak'ed, redelivered, handled once
    assert await _dead_letters(pool, consumer.name) == []
    assert max(handler.attempts[flaky]) == 2


async def test_a_message_failing_too_often_is_dead_lettered(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, STREAM)
    consumer, handler = _consumer(pool, jetstream.js, unique_id, max_deliveries=3)
    hopeless = f"{unique_id}-hopeless"
    handler.fail_before_delivery[hopeless] = 1_000
    last = await _publish(jetstream.js, consumer.subject, hopeless, _payload(3))

    async with _running(consumer) as task:
        await _eventually(lambda: _settled(jetstream.js, consumer, last), "a dead letter", task)

    [dead] = await _dead_letters(pool, consumer.name)
    assert dead["event_id"] == hopeless
    assert dead["deliveries"] == 3
    assert "ConnectionError" in dead["error"]
    assert handler.attempts[hopeless] == [1, 2, 3]
    assert await _effects(pool, consumer.name) == []


async def test_replaying_a_dead_letter_after_a_fix_applies_it_once(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, STREAM)
    consumer, handler = _consumer(pool, jetstream.js, unique_id)
    refused = f"{unique_id}-refused"
    handler.refused.add(refused)  # a handler bug refuses a valid event
    last = await _publish(jetstream.js, consumer.subject, refused, _payload(8))
    async with _running(consumer) as task:
        await _eventually(lambda: _settled(jetstream.js, consumer, last), "a dead letter", task)
    [listed] = await list_dead_letters(pool, consumer.name)
    assert listed["event_id"] == refused
    assert await _effects(pool, consumer.name) == []

    handler.refused.clear()  # the fix is deployed
    dead_letter_id = listed["id"]
    assert isinstance(dead_letter_id, int)
    await consumer.replay(dead_letter_id)

    [effect] = await _effects(pool, consumer.name)
    assert (effect["event_id"], effect["points"]) == (refused, 8)
    # The original context comes along: in the headers and bound for the handler's logs.
    assert effect["correlation_id"] == f"corr-{refused}"
    assert effect["bound_correlation_id"] == f"corr-{refused}"
    assert await list_dead_letters(pool, consumer.name) == []
    [dead] = await _dead_letters(pool, consumer.name)
    assert dead["replayed_at"] is not None

    attempts = list(handler.attempts[refused])
    await consumer.replay(dead_letter_id)  # a second replay does nothing
    assert len(await _effects(pool, consumer.name)) == 1
    assert handler.attempts[refused] == attempts


async def test_replay_refuses_unknown_and_other_consumers_dead_letters(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    mine, _ = _consumer(pool, jetstream.js, f"{unique_id}a")
    theirs, _ = _consumer(pool, jetstream.js, f"{unique_id}b")
    delivery = Delivery(event_id=f"{unique_id}-1", subject=theirs.subject, data=_payload(1))
    await dead_letter(pool, theirs.name, delivery, InvalidInput("bad", "bad"))
    [theirs_letter] = await list_dead_letters(pool, theirs.name)
    their_id = theirs_letter["id"]
    assert isinstance(their_id, int)

    with pytest.raises(LookupError):
        await mine.replay(their_id)
    with pytest.raises(LookupError):
        await mine.replay(their_id + 1_000)
    assert await _effects(pool, mine.name) == []


async def test_list_dead_letters_shows_only_unreplayed_ones(
    pool: asyncpg.Pool, jetstream: Nats, unique_id: str
) -> None:
    a, _ = _consumer(pool, jetstream.js, f"{unique_id}a")
    b, _ = _consumer(pool, jetstream.js, f"{unique_id}b")
    for consumer, n in [(a, 1), (b, 2), (a, 3)]:
        delivery = Delivery(
            event_id=f"{unique_id}-{n}",
            subject=consumer.subject,
            data=_payload(n),
            headers={"Nats-Msg-Id": f"{unique_id}-{n}"},
            stream_seq=n,
            num_delivered=n,
        )
        await dead_letter(pool, consumer.name, delivery, ValueError(f"broken {n}"))

    everyone = [r for r in await list_dead_letters(pool) if str(r["consumer"]) in (a.name, b.name)]
    assert [r["event_id"] for r in everyone] == [f"{unique_id}-{n}" for n in (1, 2, 3)]
    assert everyone[0]["error"] == "ValueError('broken 1')"
    assert everyone[2]["deliveries"] == 3
    assert [r["event_id"] for r in await list_dead_letters(pool, a.name)] == [
        f"{unique_id}-1",
        f"{unique_id}-3",
    ]

    first_id = everyone[0]["id"]
    assert isinstance(first_id, int)
    await a.replay(first_id)

    assert [r["event_id"] for r in await list_dead_letters(pool, a.name)] == [f"{unique_id}-3"]
    assert [r["event_id"] for r in await list_dead_letters(pool, b.name)] == [f"{unique_id}-2"]
    assert [r["event_id"] for r in await _effects(pool, a.name)] == [f"{unique_id}-1"]
