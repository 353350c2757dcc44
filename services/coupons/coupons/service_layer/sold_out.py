"""Stocks (and stock days) a process has seen exhausted: the flash grab's losers are told
"sold out" from memory, for a few seconds at a time."""

from __future__ import annotations

import time
from collections.abc import Callable


class SoldOutMemory:
    """Stocks (and stock days) this process has seen exhausted. A hint with a short life, so a
    stock another replica or ops changes is seen again soon; the database is the truth.

    With an exhausted stock it may keep its holders' (member, request id) keys: complete once
    the counter is at its end (no coupon of it can be added), so a claim that is not a retry
    of one of them is answered "sold out" without asking the database at all."""

    def __init__(self, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._until: dict[tuple[str, ...], float] = {}
        self._holders: dict[tuple[str, ...], frozenset[tuple[str, str]]] = {}

    @property
    def disabled(self) -> bool:
        return self._ttl_s <= 0

    def known(self, key: tuple[str, ...]) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until < self._clock():
            del self._until[key]
            self._holders.pop(key, None)
            return False
        return True

    def remember(
        self, key: tuple[str, ...], holders: frozenset[tuple[str, str]] | None = None
    ) -> None:
        self._until[key] = self._clock() + self._ttl_s
        if holders is not None:
            self._holders[key] = holders

    def holders(self, key: tuple[str, ...]) -> frozenset[tuple[str, str]] | None:
        """The (member, request id) keys holding a coupon of an exhausted stock, if known."""
        return self._holders.get(key) if self.known(key) else None
