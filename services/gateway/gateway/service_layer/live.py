"""Live push to the shoppers connected to this gateway process: one queue per open stream.

The dispatcher (one NATS subscription per process) calls ``publish`` for each event; it only
ever appends to bounded in-memory queues, so a slow or stalled client never holds it up: a
stream whose queue is full is dropped (its client reconnects and re-reads the ledger, which
is the truth; live push is best effort).

**Resuming.** Every event gets an id ``<process>-<sequence>``, and the stream's ``ready`` event
carries the id of "now". For each member with a stream open (or closed less than
``resume_window_s`` ago) the hub keeps that member's last ``replay_limit`` events, so a client
that reconnects with ``Last-Event-ID`` gets exactly the events it missed, in order, before the
live ones. When the hub cannot promise that — the id is another process's (the reconnect
reached another replica, or this one restarted), the member's buffer overflowed, or the member
was away longer than the window — ``resume`` says so and the stream sends ``resync``: re-read
the card and the ledger, which are the truth.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]
Key = tuple[str, str]  # (mall_id, member_id)
Item = tuple[str, Event]  # (event id, event)


@dataclass(slots=True)
class _Recent:
    """One member's last events; every event after ``since`` is in ``events`` unless its
    sequence is at most ``evicted``."""

    since: int
    touched: float
    events: deque[tuple[int, Event]] | None = None  # made on the first event
    evicted: int = 0


class Subscription:
    # Idle streams are most streams: no queue and no waiter object until there is a use for
    # one (an empty deque alone is ~600 bytes; see bench/gateway_card.py for the total).
    __slots__ = ("_hub", "_items", "_limit", "_waiter", "closed", "key")

    def __init__(self, hub: LiveHub, key: Key, limit: int) -> None:
        self.key = key
        self._hub = hub
        self._limit = limit
        self._items: deque[Item] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def offer(self, item: Item) -> bool:
        """Queue the event; False (and nothing queued) when the queue is full."""
        if self.closed:
            return False
        if self._items is None:
            self._items = deque()
        elif len(self._items) >= self._limit:
            return False
        self._items.append(item)
        self._wake()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def next(self) -> Item | None:
        """The next (id, event), or None once the stream is closed (dropped, or shutting down)."""
        while not self._items and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.closed or not self._items:
            return None
        return self._items.popleft()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._hub.unsubscribe(self)


class LiveHub:
    def __init__(
        self,
        *,
        queue_limit: int = 64,
        replay_limit: int = 32,
        resume_window_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue_limit = queue_limit
        self._replay_limit = replay_limit
        self._resume_window_s = resume_window_s
        self._clock = clock
        self._subscribers: dict[Key, set[Subscription]] = {}
        self._recent: OrderedDict[Key, _Recent] = OrderedDict()
        self._tag = secrets.token_hex(4)
        self._seq = 0
        self.dropped = 0

    @property
    def now_id(self) -> str:
        """The id of "now": resuming from it replays whatever is published after this."""
        return f"{self._tag}-{self._seq}"

    def subscribe(self, mall_id: str, member_id: str) -> Subscription:
        """A new stream for this member; use it as a context manager to unsubscribe."""
        sub = Subscription(self, (mall_id, member_id), self._queue_limit)
        self._subscribers.setdefault(sub.key, set()).add(sub)
        self._touch(sub.key)
        return sub

    def resume(self, mall_id: str, member_id: str, last_event_id: str) -> list[Item] | None:
        """The member's events after ``last_event_id``, oldest first; None when some may be
        missing (the caller tells the client to resync). Call right after ``subscribe``."""
        tag, _, seq_text = last_event_id.partition("-")
        if tag != self._tag or not seq_text.isdigit() or int(seq_text) > self._seq:
            return None
        after = int(seq_text)
        recent = self._recent.get((mall_id, member_id))
        if recent is None or after < recent.since or after < recent.evicted:
            return None
        events = recent.events or ()
        return [(f"{self._tag}-{seq}", event) for seq, event in events if seq > after]

    def _touch(self, key: Key) -> _Recent:
        now = self._clock()
        for _ in range(min(8, len(self._recent))):  # forget members away past the window
            oldest_key, oldest = next(iter(self._recent.items()))
            if oldest_key in self._subscribers:  # still here: to the back of the line
                oldest.touched = now
                self._recent.move_to_end(oldest_key)
            elif now - oldest.touched > self._resume_window_s:
                del self._recent[oldest_key]
            else:
                break
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = _Recent(since=self._seq, touched=now)
        recent.touched = now
        self._recent.move_to_end(key)
        return recent

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        subs = self._subscribers.get(sub.key)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subscribers[sub.key]
            if sub.key in self._recent:
                self._touch(sub.key)  # the resume window starts when the last stream ends

    def publish(self, mall_id: str, member_id: str, event: Event) -> int:
        """Hand the event to this member's streams in this process; how many took it."""
        self._seq += 1
        key = (mall_id, member_id)
        item = (f"{self._tag}-{self._seq}", event)
        subs = self._subscribers.get(key)
        recent = self._recent.get(key)
        if recent is not None:
            if subs or self._clock() - recent.touched <= self._resume_window_s:
                if recent.events is None:
                    recent.events = deque()
                recent.events.append((self._seq, event))
                if len(recent.events) > self._replay_limit:
                    recent.evicted = recent.events.popleft()[0]
            else:  # away too long: this event is not kept, so nothing may be resumed
                del self._recent[key]
        delivered = 0
        for sub in list(subs or ()):
            if sub.offer(item):
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
