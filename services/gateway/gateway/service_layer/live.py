"""Live push to the shoppers connected to this gateway process: one queue per open stream.

The dispatcher (one NATS subscription per process) calls ``publish`` for each event; it only
ever appends to bounded in-memory queues, so a slow or stalled client never holds it up: a
stream whose queue is full is dropped (its client reconnects and re-reads the ledger, which
is the truth; live push is best effort).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

Event = dict[str, Any]
Key = tuple[str, str]  # (mall_id, member_id)


class Subscription:
    def __init__(self, hub: LiveHub, key: Key, limit: int) -> None:
        self.key = key
        self._hub = hub
        self._limit = limit
        self._items: deque[Event] = deque()
        self._wake = asyncio.Event()
        self.closed = False

    def offer(self, event: Event) -> bool:
        """Queue the event; False (and nothing queued) when the queue is full."""
        if self.closed or len(self._items) >= self._limit:
            return False
        self._items.append(event)
        self._wake.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self) -> Event | None:
        """The next event, or None once the stream is closed (dropped, or shutting down)."""
        while not self._items and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        if self.closed:
            return None
        return self._items.popleft()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._hub.unsubscribe(self)


class LiveHub:
    def __init__(self, *, queue_limit: int = 64) -> None:
        self._queue_limit = queue_limit
        self._subscribers: dict[Key, set[Subscription]] = {}
        self.dropped = 0

    def subscribe(self, mall_id: str, member_id: str) -> Subscription:
        """A new stream for this member; use it as a context manager to unsubscribe."""
        sub = Subscription(self, (mall_id, member_id), self._queue_limit)
        self._subscribers.setdefault(sub.key, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        subs = self._subscribers.get(sub.key)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subscribers[sub.key]

    def publish(self, mall_id: str, member_id: str, event: Event) -> int:
        """Hand the event to this member's streams in this process; how many took it."""
        delivered = 0
        for sub in list(self._subscribers.get((mall_id, member_id), ())):
            if sub.offer(event):
                delivered += 1
            else:  # a slow client: drop it rather than wait for it
                self.dropped += 1
                self.unsubscribe(sub)
        return delivered

    def streams(self, mall_id: str | None = None, member_id: str | None = None) -> int:
        """Open streams (of one member when given)."""
        if mall_id is not None and member_id is not None:
            return len(self._subscribers.get((mall_id, member_id), ()))
        return sum(len(s) for s in self._subscribers.values())

    def close_all(self) -> None:
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                self.unsubscribe(sub)
