"""Outbox relay: publish queued events to JetStream, forever, with backoff.

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so several relay replicas share the work,
published pipelined (all in flight, then awaited) because an awaited publish per event caps
near 4k msg/s, and deleted only after JetStream acknowledged them. ``Nats-Msg-Id`` is the
event id, so a publish repeated after a crash is recognised by the stream (a duplicate ack
counts as success) and by every consumer's inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import asyncpg
import structlog
from kit.db import DB_UNAVAILABLE
from kit.lifecycle import sleep_or_stop
from kit.liveness import HEARTBEATS, Heartbeats
from kit.metrics import OUTBOX_BACKLOG, OUTBOX_PUBLISHED
from nats.js.client import JetStreamContext

from eventbus.outbox import NOTIFY_CHANNEL

log = structlog.get_logger(__name__)

BACKLOG_SAMPLE_INTERVAL_S = 1.0
HEARTBEAT_NAME = "outbox-relay"

_CLAIM = """SELECT seq, event_id, mall_id, subject, payload, headers
              FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"""


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        max_backoff_s: float = 10.0,
        linger_s: float = 0.0,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        self._pool = pool
        self._js = js
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._max_backoff_s = max_backoff_s
        self._linger_s = linger_s
        self._heartbeats = heartbeats if heartbeats is not None else HEARTBEATS
        self._backlog_sampled = 0.0
        self._wake = asyncio.Event()
        self._listener_lost = False
        self.published = 0

    async def publish_pending(self) -> int:
        """Publish one batch; return how many events left the outbox."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self._batch_size)
            if not rows:
                return 0
            results = await asyncio.gather(
                *(self._publish(row) for row in rows), return_exceptions=True
            )
            done = [row["seq"] for row, res in zip(rows, results, strict=True) if res is None]
            failures = [res for res in results if isinstance(res, BaseException)]
            if done:
                await conn.execute("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", done)
        self.published += len(done)
        OUTBOX_PUBLISHED.inc(len(done))
        if failures:
            raise failures[0]
        return len(done)

    async def _sample_backlog(self) -> None:
        """What is still waiting, for the outbox-backlog alert (cheap: the outbox is drained);
        at most once a second, not on every wake-up."""
        now = time.monotonic()
        if now - self._backlog_sampled < BACKLOG_SAMPLE_INTERVAL_S:
            return
        self._backlog_sampled = now
        try:
            OUTBOX_BACKLOG.set(await self._pool.fetchval("SELECT count(*) FROM outbox"))
        except DB_UNAVAILABLE as exc:
            log.warning("outbox_backlog_sample_failed", error=repr(exc))

    async def _publish(self, row: asyncpg.Record) -> None:
        headers = {
            **json.loads(row["headers"]),
            "Nats-Msg-Id": row["event_id"],
            "x-mall-id": row["mall_id"],
        }
        await self._js.publish(row["subject"], row["payload"], headers=headers, timeout=5)

    async def run(self, stop: asyncio.Event) -> None:
        """Component: relay until asked to stop. Woken by NOTIFY, polling as a fallback.

        A database or NATS outage never ends the loop: the LISTEN connection is dropped and
        taken again once the database answers (a restarted PostgreSQL forgets listeners).
        Beats on every turn (at least every ``poll_interval_s``, or backoff while retrying),
        so only a turn stuck on one await goes stale and gets the process restarted."""
        listener: asyncpg.pool.PoolConnectionProxy | None = None
        backoff = 0.1
        try:
            while not stop.is_set():
                self._heartbeats.beat(HEARTBEAT_NAME)
                # Cleared before the claim so that a NOTIFY arriving mid-batch is not lost.
                self._wake.clear()
                try:
                    if listener is None or self._listener_lost:
                        listener = await self._listen(listener)
                    count = await self.publish_pending()
                    if count < self._batch_size:
                        await self._sample_backlog()
                    backoff = 0.1
                except Exception as exc:  # a NATS or database outage: never give up
                    log.warning("outbox_publish_failed", error=repr(exc), retry_in_s=backoff)
                    if await sleep_or_stop(stop, backoff):
                        break
                    backoff = min(backoff * 2, self._max_backoff_s)
                    continue
                if count == self._batch_size:
                    continue  # more waiting: keep going without sleeping
                if count and self._linger_s:
                    # Events are flowing: let the next ones gather for a moment, so that a
                    # claim-publish-delete transaction carries many rather than one or two.
                    if await sleep_or_stop(stop, self._linger_s):
                        break
                    continue
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait(
                    {waiter, stopper},
                    timeout=self._poll_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
                stopper.cancel()
        finally:
            self._heartbeats.forget(HEARTBEAT_NAME)  # stopped on purpose: nothing to expect
            await self._unlisten(listener)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    def _on_lost(self, *_: object) -> None:
        self._listener_lost = True
        self._wake.set()

    async def _listen(
        self, previous: asyncpg.pool.PoolConnectionProxy | None
    ) -> asyncpg.pool.PoolConnectionProxy:
        """A connection LISTENing for commits; its loss wakes the loop to take a new one."""
        await self._unlisten(previous)
        conn = await self._pool.acquire()
        self._listener_lost = False
        try:
            conn.add_termination_listener(self._on_lost)
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException:
            await self._unlisten(conn)
            raise
        return conn

    async def _unlisten(self, conn: asyncpg.pool.PoolConnectionProxy | None) -> None:
        """Give the connection back; a dead one cannot un-LISTEN, and need not."""
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.remove_termination_listener(self._on_lost)
            await conn.remove_listener(NOTIFY_CHANNEL, self._on_notify)
        with contextlib.suppress(Exception):
            await self._pool.release(conn)
