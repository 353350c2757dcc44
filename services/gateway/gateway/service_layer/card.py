"""Read a member's card: one concurrent fan-out, coalesced per member, kept in memory.

**Fan-out.** Each section is one call to the service that owns it, with its own deadline; the
sections run concurrently, so a card costs the slowest section, and a section that misses
its deadline or fails is answered ``unavailable`` while the others still show. Only the member
section can fail the whole card: a member that does not exist (``not_a_member``) has no card.

**Single flight.** Concurrent reads of the same member's card share one fan-out: the first
read starts it, the others await the same result (a waiter that gives up never cancels it
for the rest).

**Freshness contract.** A card is kept in this process's memory and answered from there until
the first of:

* a change event for that member reaches this gateway process: ``points.points.*`` (credit,
  reversal, redemption, expiry), ``member.tier.changed`` / ``member.member.joined``,
  ``coupons.coupon.*``, ``parking.session.*`` — the process's live-push subscription calls
  ``invalidate`` *before* it pushes the event to the member's SSE streams, so a client that
  re-reads the card after an SSE event sees that change (the owning service published the
  event after committing it);
* the TTL passes (``ttl_s``, a few seconds: the safety net for an event this process missed,
  e.g. while disconnected from NATS; a card with a section that failed transiently is kept
  only ``degraded_ttl_s``). For ``stale_s`` after that, a read still answers the card at once
  while one fan-out refreshes it in the background (stale-while-revalidate: the safety net's
  refresh never makes a shopper wait); later, a read waits for a fresh fan-out. At most
  ``max_refreshing`` such background fan-outs run at once (many cards going stale together
  must not flood member and points); past that, the stale card is answered and a later read
  refreshes it.

A fan-out that was in flight when an invalidation arrived still answers the readers that were
waiting for it, but is not kept, and later readers start a fresh one: a card read before a
change is never served after the change was announced. So a card never predates the last
change event this process received for that member, and is never answered more than
``ttl_s + stale_s`` after it was read from the services.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from kit.errors import AppError, ErrorKind

from gateway.domain.card import SECTIONS, Card, Section, Unavailability

log = structlog.get_logger(__name__)

Key = tuple[str, str]  # (mall_id, member_id)
#: ``fetch(mall_id, member_id, deadline_s)``: the section's data, or raises.
Fetch = Callable[[str, str, float], Awaitable[dict[str, Any]]]
#: Turns a card into the bytes answered (the entrypoint's serialiser), once per fan-out.
Render = Callable[[Card], bytes]


@dataclass(frozen=True)
class SectionSource:
    """Where one section comes from; ``fetch=None`` until that service is connected."""

    name: str
    fetch: Fetch | None
    deadline_s: float = 0.25


@dataclass(frozen=True)
class CardAnswer:
    card: Card
    body: bytes


@dataclass
class _Entry:
    answer: CardAnswer
    expires: float


class _Flight:
    __slots__ = ("background", "future", "stale")

    def __init__(self, future: asyncio.Future[CardAnswer], *, background: bool) -> None:
        self.future = future
        self.background = background
        self.stale = False


class CardReader:
    def __init__(
        self,
        sources: list[SectionSource],
        render: Render,
        *,
        ttl_s: float = 5.0,
        degraded_ttl_s: float = 1.0,
        stale_s: float = 0.0,
        max_refreshing: int = 8,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        counted: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        """``counted(outcome)`` hears of every read: ``memory`` (answered from the cache),
        ``stale`` (answered from it past the TTL, a refresh under way), ``joined`` (shared a
        fan-out under way) or ``fanout`` (started one)."""
        unknown = {s.name for s in sources} - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown card sections: {sorted(unknown)}")
        self._sources = sources
        self._render = render
        self._ttl_s = ttl_s
        self._degraded_ttl_s = degraded_ttl_s
        self._stale_s = stale_s
        self._max_refreshing = max_refreshing
        self._refreshing = 0
        self._max_entries = max_entries
        self._clock = clock
        self._counted = counted
        self._cache: OrderedDict[Key, _Entry] = OrderedDict()
        self._flights: dict[Key, _Flight] = {}
        self.fanouts = 0
        self.hits = 0

    async def read(self, mall_id: str, member_id: str) -> CardAnswer:
        key = (mall_id, member_id)
        entry = self._cache.get(key)
        if entry is not None:
            now = self._clock()
            if entry.expires > now:
                self.hits += 1
                self._counted("memory")
                return entry.answer
            if entry.expires + self._stale_s > now:
                if key not in self._flights and self._refreshing < self._max_refreshing:
                    self._start(key, background=True)  # lands in the cache for later reads
                self._counted("stale")
                return entry.answer
        flight = self._flights.get(key)
        if flight is None:
            flight = self._start(key)
            self._counted("fanout")
        else:
            self._counted("joined")
        return await asyncio.shield(flight.future)

    def invalidate(self, mall_id: str, member_id: str) -> None:
        """A change for this member was announced: forget its card, and the fan-out under way."""
        key = (mall_id, member_id)
        self._cache.pop(key, None)
        flight = self._flights.pop(key, None)
        if flight is not None:
            flight.stale = True

    def clear(self) -> None:
        """Forget every card (e.g. after missing events while disconnected)."""
        self._cache.clear()
        for flight in self._flights.values():
            flight.stale = True
        self._flights.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def _start(self, key: Key, *, background: bool = False) -> _Flight:
        flight = _Flight(asyncio.ensure_future(self._build(*key)), background=background)
        self._refreshing += background
        self._flights[key] = flight
        flight.future.add_done_callback(lambda f: self._landed(key, flight))
        return flight

    def _landed(self, key: Key, flight: _Flight) -> None:
        self._refreshing -= flight.background
        if self._flights.get(key) is flight:
            del self._flights[key]
        if flight.stale or flight.future.cancelled() or flight.future.exception() is not None:
            return
        answer = flight.future.result()
        ttl = answer.card.ttl_s(full_s=self._ttl_s, degraded_s=self._degraded_ttl_s)
        self._cache[key] = _Entry(answer, self._clock() + ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    async def _build(self, mall_id: str, member_id: str) -> CardAnswer:
        self.fanouts += 1
        results = await asyncio.gather(
            *(self._section(s, mall_id, member_id) for s in self._sources)
        )
        card = Card(
            mall_id, member_id, dict(zip((s.name for s in self._sources), results, strict=True))
        )
        return CardAnswer(card, self._render(card))

    @staticmethod
    async def _section(source: SectionSource, mall_id: str, member_id: str) -> Section:
        if source.fetch is None:
            return Section.missing(Unavailability.NOT_CONNECTED)
        try:
            async with asyncio.timeout(source.deadline_s):
                return Section.ok(await source.fetch(mall_id, member_id, source.deadline_s))
        except TimeoutError:
            # info, not warning: under overload every fan-out would log one
            log.info("card_section_late", section=source.name, deadline_s=source.deadline_s)
            return Section.missing(Unavailability.TIMEOUT)
        except AppError as exc:
            if source.name == "member" and exc.kind is ErrorKind.NOT_FOUND:
                raise  # no such member here: no card at all
            if exc.kind is ErrorKind.UNAVAILABLE and exc.code == "deadline_exceeded":
                return Section.missing(Unavailability.TIMEOUT)
            log.warning("card_section_failed", section=source.name, code=exc.code)
            return Section.missing(Unavailability.ERROR)
