"""Durable pull consumer with an inbox: ack after commit, nak on transient failure,
dead-letter on poison.

A fetched batch is handled in one transaction (group commit is ~30× cheaper per message
than one transaction each). If the batch fails, its messages are retried one by one so a
single poison message is isolated instead of blocking the stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import nats.errors
import structlog
from google.protobuf.message import DecodeError, Message
from kit import context
from kit.db import Connection
from kit.errors import AppError, Unavailable
from kit.lifecycle import sleep_or_stop
from kit.liveness import HEARTBEATS, Heartbeats
from kit.metrics import (
    CONSUMER_BATCH,
    CONSUMER_LAG,
    CONSUMER_MESSAGES,
    CONSUMER_REDELIVERIES,
    DEAD_LETTERS,
)
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=Message)


LAG_SAMPLE_INTERVAL_S = 5.0


class PoisonMessage(Exception):
    """A message that can never be handled as it is (undecodable, invalid)."""


@dataclass(frozen=True)
class Delivery:
    """One message as a handler sees it, detached from the NATS client."""

    event_id: str
    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    stream_seq: int | None = None
    num_delivered: int = 1

    @property
    def context(self) -> dict[str, str]:
        """Correlation headers to forward on events this message causes."""
        return {k: v for k, v in self.headers.items() if k.lower().startswith("x-")}

    def decode(self, cls: type[M]) -> M:
        try:
            return cls.FromString(self.data)
        except DecodeError as exc:
            raise PoisonMessage(f"not a {cls.DESCRIPTOR.full_name}: {exc}") from exc


#: Runs inside the consumer's transaction with the deliveries not seen before.
Handler = Callable[[Connection, Sequence[Delivery]], Awaitable[None]]

_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    Unavailable,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.LockNotAvailableError,
)


def _delivery(msg: Msg) -> Delivery:
    headers = dict(msg.headers or {})
    meta = msg.metadata
    event_id = headers.get("Nats-Msg-Id") or f"{meta.stream}:{meta.sequence.stream}"
    return Delivery(
        event_id=event_id,
        subject=msg.subject,
        data=msg.data,
        headers=headers,
        stream_seq=meta.sequence.stream,
        num_delivered=meta.num_delivered,
    )


class Consumer:
    """One durable consumer ``<service>-<handler>`` on one stream subject."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        name: str,
        stream: str,
        subject: str,
        handler: Handler,
        batch_size: int = 200,
        max_deliveries: int = 8,
        ack_wait_s: float = 30.0,
        retry_delays_s: Sequence[float] = (0.5, 2, 5, 15, 30, 60),
        fetch_wait_s: float = 1.0,
        linger_s: float = 0.0,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        self.name = name
        self.stream = stream
        self.subject = subject
        self._pool = pool
        self._js = js
        self._handler = handler
        self._batch_size = batch_size
        self._max_deliveries = max_deliveries
        self._ack_wait_s = ack_wait_s
        self._retry_delays_s = retry_delays_s
        self._fetch_wait_s = fetch_wait_s
        self._linger_s = linger_s
        self._heartbeats = heartbeats if heartbeats is not None else HEARTBEATS
        self.handled = 0

    async def ensure(self) -> None:
        """Create the durable consumer (idempotent). Redelivery is never capped by the server:
        we decide when a message is dead, so nothing is dropped silently."""
        await self._js.add_consumer(
            self.stream,
            ConsumerConfig(
                durable_name=self.name,
                filter_subject=self.subject,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._ack_wait_s,
                max_deliver=-1,
                max_ack_pending=max(1000, self._batch_size * 4),
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Component: fetch, handle, ack until asked to stop; finishes the batch in hand.

        Beats on every turn (the fetch waits at most ``fetch_wait_s``), so only a turn stuck
        on one await (a hung statement) goes stale and gets the process restarted."""
        beat = self._heartbeats.beat
        beat(self.name)  # from here on, a hang counts (in setting up too)
        await self.ensure()
        sub = await self._js.pull_subscribe_bind(self.name, stream=self.stream)
        backoff = 0.1
        sampled = 0.0
        try:
            while not stop.is_set():
                beat(self.name)  # every turn: after processing, a fetch timing out or failing
                if time.monotonic() - sampled > LAG_SAMPLE_INTERVAL_S:
                    sampled = time.monotonic()
                    await self._sample_lag()
                try:
                    # Hands over what is there at once, not a full batch (tested).
                    msgs = await sub.fetch(self._batch_size, timeout=self._fetch_wait_s)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue  # nothing to do within the fetch window
                except Exception as exc:  # NATS away: keep trying, slower each time
                    log.warning("consumer_fetch_failed", consumer=self.name, error=repr(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                await self.process(msgs)
                if self._linger_s and len(msgs) < self._batch_size:
                    # Busy but not saturated: let the next batch gather for a moment rather
                    # than pay a transaction for every message or two (group commit). An idle
                    # consumer still gets its next message at once: the fetch waits for it.
                    await sleep_or_stop(stop, self._linger_s)
        finally:
            self._heartbeats.forget(self.name)  # stopped on purpose (or the process is ending)
            await sub.unsubscribe()

    async def _sample_lag(self) -> None:
        """How far behind the stream this consumer is, for the consumer-lag alert."""
        try:
            info = await self._js.consumer_info(self.stream, self.name)
        except Exception as exc:  # NATS away: the fetch loop reports it
            log.debug("consumer_lag_sample_failed", consumer=self.name, error=repr(exc))
            return
        CONSUMER_LAG.labels(self.name).set(info.num_pending or 0)

    async def process(self, msgs: Sequence[Msg]) -> None:
        deliveries = [_delivery(m) for m in msgs]
        redelivered = sum(1 for d in deliveries if d.num_delivered > 1)
        if redelivered:
            CONSUMER_REDELIVERIES.labels(self.name).inc(redelivered)
        try:
            with CONSUMER_BATCH.labels(self.name).time():
                await self._handle(deliveries)
        except Exception as exc:
            if len(msgs) == 1:
                await self._settle_failure(msgs[0], deliveries[0], exc)
                return
            log.info("batch_failed_isolating", consumer=self.name, size=len(msgs), error=repr(exc))
            for msg, delivery in zip(msgs, deliveries, strict=True):
                try:
                    await self._handle([delivery])
                except Exception as one_exc:
                    await self._settle_failure(msg, delivery, one_exc)
                else:
                    await msg.ack()
            return
        for msg in msgs:
            await msg.ack()

    async def _handle(self, deliveries: Sequence[Delivery]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            fresh = {
                r["event_id"]
                for r in await conn.fetch(
                    """INSERT INTO inbox (consumer, event_id)
                       SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING
                       RETURNING event_id""",
                    self.name,
                    [d.event_id for d in deliveries],
                )
            }
            todo: dict[str, Delivery] = {}
            for d in deliveries:
                if d.event_id in fresh:
                    todo.setdefault(d.event_id, d)
            if len(todo) < len(deliveries):
                CONSUMER_MESSAGES.labels(self.name, "duplicate").inc(len(deliveries) - len(todo))
            if todo:
                first = next(iter(todo.values()))
                with context.bound(**context.from_headers(first.headers), consumer=self.name):
                    await self._handler(conn, list(todo.values()))
        self.handled += len(deliveries)
        CONSUMER_MESSAGES.labels(self.name, "handled").inc(len(todo))

    async def _settle_failure(self, msg: Msg, delivery: Delivery, exc: Exception) -> None:
        poison = isinstance(exc, PoisonMessage) or (
            isinstance(exc, AppError) and not isinstance(exc, Unavailable)
        )
        transient = isinstance(exc, _TRANSIENT)
        if not poison and delivery.num_delivered < self._max_deliveries:
            delay = self._retry_delays_s[
                min(delivery.num_delivered - 1, len(self._retry_delays_s) - 1)
            ]
            log.warning(
                "message_retry",
                consumer=self.name,
                event_id=delivery.event_id,
                transient=transient,
                attempt=delivery.num_delivered,
                retry_in_s=delay,
                error=repr(exc),
            )
            await msg.nak(delay=delay)
            CONSUMER_MESSAGES.labels(self.name, "retried").inc()
            return
        try:
            await dead_letter(self._pool, self.name, delivery, exc)
        except Exception as dl_exc:  # cannot record it: leave it to redelivery, lose nothing
            log.error("dead_letter_failed", consumer=self.name, error=repr(dl_exc))
            await msg.nak(delay=self._retry_delays_s[-1])
            return
        DEAD_LETTERS.labels(self.name).inc()
        CONSUMER_MESSAGES.labels(self.name, "dead_lettered").inc()
        log.error(
            "message_dead_lettered", consumer=self.name, event_id=delivery.event_id, error=repr(exc)
        )
        await msg.term()

    async def replay(self, dead_letter_id: int) -> None:
        """Handle a dead-lettered message again (after a fix), exactly once."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM dead_letters WHERE id = $1 AND consumer = $2",
                dead_letter_id,
                self.name,
            )
        if row is None:
            raise LookupError(f"no dead letter {dead_letter_id} for {self.name}")
        if row["replayed_at"] is not None:
            return
        delivery = Delivery(
            event_id=row["event_id"],
            subject=row["subject"],
            data=row["payload"],
            headers=json.loads(row["headers"]),
            stream_seq=row["stream_seq"],
            num_delivered=row["deliveries"],
        )
        await self._handle([delivery])
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE dead_letters SET replayed_at = now() WHERE id = $1", row["id"]
            )


def describe(exc: BaseException) -> str:
    """An error as ops should read it: the stable code first when there is one."""
    if isinstance(exc, AppError):
        return f"{exc.code}: {exc.message}"
    return repr(exc)


async def dead_letter(
    pool: asyncpg.Pool, consumer: str, delivery: Delivery, exc: BaseException
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO dead_letters
                   (consumer, event_id, subject, stream_seq, payload, headers, error, deliveries)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)""",
            consumer,
            delivery.event_id,
            delivery.subject,
            delivery.stream_seq,
            delivery.data,
            json.dumps(delivery.headers),
            describe(exc)[:2000],
            delivery.num_delivered,
        )


async def list_dead_letters(
    pool: asyncpg.Pool, consumer: str | None = None
) -> list[dict[str, object]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT id, consumer, event_id, subject, stream_seq, error, deliveries, created_at
                 FROM dead_letters
                WHERE replayed_at IS NULL AND ($1::text IS NULL OR consumer = $1)
                ORDER BY id""",
            consumer,
        )
    return [dict(r) for r in rows]
