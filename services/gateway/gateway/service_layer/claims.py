"""Claims through the gateway: concurrent HTTP claims coalesced into coupons' batch RPC, and
"sold out" answered from memory once a stock is known exhausted.

* **Coalescing.** Each claim is submitted to a ``kit.batching.Batcher``: whatever claims wait
  when one of ``workers`` batch slots is free go to coupons as one ``ClaimCoupons`` call (at
  most ``max_batch``), and each caller gets its own result. An idle gateway sends a batch of
  one at once (no added wait); under a flash grab batches grow by themselves, and at most
  ``workers`` batches are in flight.
* **Sold-out memory.** A stock is flagged exhausted for ``sold_out_s`` when a batch answers one
  of its claims ``sold_out``, or when ``coupons.stock.exhausted`` arrives. While flagged, a
  claim on it is refused at once, without an RPC — unless its member is known to hold one of
  the stock's coupons (answered here, or seen in ``coupons.coupon.claimed``): a holder's retry
  goes to coupons and gets its coupon back. coupons stays the truth: the flag is per process
  and short-lived, then the next claim asks coupons again.
* **Audience.** A stock's terms never change, so its audience (tiers, tags) is read once per
  process; the member's tier and tags are read only for a stock that has one, and kept for
  ``profile_s`` (forgotten at once on ``member.tier.changed``; a tag change shows within
  ``profile_s``), so a grab for a tier-only stock is not one member RPC per claim.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kit.batching import Batcher

from gateway.domain.claims import Claimed, ClaimRequest, sold_out


class Audience(Protocol):
    @property
    def anyone(self) -> bool: ...


class Coupons(Protocol):
    async def claim_batch(self, claims: Sequence[ClaimRequest]) -> list[Claimed]: ...

    async def audience(self, mall_id: str, stock_id: str) -> Any: ...

    async def profile(self, mall_id: str, member_id: str) -> tuple[str, tuple[str, ...]]: ...


StockKey = tuple[str, str]


class SoldOutMemory:
    """Stocks known exhausted (for a short while) and the members known to hold their coupons."""

    def __init__(
        self,
        *,
        sold_out_s: float = 2.0,
        holders_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sold_out_s = sold_out_s
        self._holders_s = holders_s
        self._clock = clock
        self._flags: dict[StockKey, tuple[float, str]] = {}  # → (until, reason)
        self._holders: dict[tuple[str, str, str], float] = {}  # (mall, stock, member) → seen
        self._pruned = clock()
        #: Claims refused from memory (tests, metrics).
        self.answered = 0

    def exhausted(self, mall_id: str, stock_id: str, reason: str = "stock_sold_out") -> None:
        if self._sold_out_s > 0:
            self._flags[(mall_id, stock_id)] = (self._clock() + self._sold_out_s, reason)

    def holds(self, mall_id: str, stock_id: str, member_id: str) -> None:
        now = self._clock()
        self._holders[(mall_id, stock_id, member_id)] = now
        if now - self._pruned > self._holders_s:
            self._pruned = now
            old = [k for k, seen in self._holders.items() if now - seen > self._holders_s]
            for key in old:
                del self._holders[key]

    def refusal(self, claim: ClaimRequest) -> str | None:
        """The sold-out reason to answer this claim with from memory, or None: ask coupons."""
        flag = self._flags.get((claim.mall_id, claim.stock_id))
        if flag is None:
            return None
        until, reason = flag
        if self._clock() >= until:
            del self._flags[(claim.mall_id, claim.stock_id)]
            return None
        if (claim.mall_id, claim.stock_id, claim.member_id) in self._holders:
            return None
        self.answered += 1
        return reason


class Claims:
    def __init__(
        self,
        coupons: Coupons,
        memory: SoldOutMemory,
        *,
        max_batch: int = 500,
        workers: int = 4,
        profile_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._coupons = coupons
        self.memory = memory
        self._profile_s = profile_s
        self._clock = clock
        self._profiles: dict[tuple[str, str], tuple[float, str, tuple[str, ...]]] = {}
        self._audiences: dict[StockKey, Any] = {}
        self._reading: dict[StockKey, asyncio.Task[Any]] = {}
        self.batcher: Batcher[ClaimRequest, Claimed] = Batcher(
            self._send, max_batch=max_batch, workers=workers
        )

    async def claim(self, claim: ClaimRequest) -> dict[str, Any]:
        """The coupon (plain data); raises the refusal."""
        reason = self.memory.refusal(claim)
        if reason is not None:
            raise sold_out(reason)
        audience = await self._audience(claim.mall_id, claim.stock_id)
        if audience is not None and not audience.anyone:
            tier, tags = await self._profile(claim.mall_id, claim.member_id)
            claim = ClaimRequest(
                claim.mall_id, claim.member_id, claim.stock_id, claim.request_id, tier, tags
            )
        answer = await self.batcher.submit(claim)
        if answer.refusal is not None:
            raise answer.refusal
        assert answer.coupon is not None
        return answer.coupon

    def forget_profile(self, mall_id: str, member_id: str) -> None:
        """The member's tier changed: read it again at their next claim."""
        self._profiles.pop((mall_id, member_id), None)

    async def _profile(self, mall_id: str, member_id: str) -> tuple[str, tuple[str, ...]]:
        key, now = (mall_id, member_id), self._clock()
        kept = self._profiles.get(key)
        if kept is not None and now < kept[0]:
            return kept[1], kept[2]
        tier, tags = await self._coupons.profile(mall_id, member_id)
        if self._profile_s > 0:
            if len(self._profiles) >= 100_000:
                self._profiles.pop(next(iter(self._profiles)))
            self._profiles[key] = (now + self._profile_s, tier, tags)
        return tier, tags

    async def _send(self, _: object, queued: Sequence[ClaimRequest]) -> list[Claimed]:
        """One ClaimCoupons call for the queued claims that memory cannot answer (a stock may
        have sold out while they waited)."""
        answers: list[Claimed | None] = []
        claims: list[ClaimRequest] = []
        for c in queued:
            reason = self.memory.refusal(c)
            answers.append(None if reason is None else Claimed(None, sold_out(reason)))
            if reason is None:
                claims.append(c)
        sent = iter(await self._coupons.claim_batch(claims) if claims else [])
        done = [a if a is not None else next(sent) for a in answers]
        self._learn(claims, [a for a, q in zip(done, answers, strict=True) if q is None])
        return done

    def _learn(self, claims: Sequence[ClaimRequest], answers: Sequence[Claimed]) -> None:
        for c, answer in zip(claims, answers, strict=True):
            if answer.coupon is not None:
                self.memory.holds(c.mall_id, c.stock_id, c.member_id)
            elif answer.refusal is not None and answer.refusal.code == "sold_out":
                self.memory.exhausted(
                    c.mall_id, c.stock_id, answer.refusal.details.get("reason", "stock_sold_out")
                )

    async def _audience(self, mall_id: str, stock_id: str) -> Any:
        """The stock's audience, read once per process (concurrent readers share the read);
        None for no such stock (coupons then refuses the claim)."""
        key = (mall_id, stock_id)
        if key in self._audiences:
            return self._audiences[key]
        task = self._reading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._read_audience(key))
            self._reading[key] = task
            task.add_done_callback(lambda _: self._reading.pop(key, None))
        return await asyncio.shield(task)

    async def _read_audience(self, key: StockKey) -> Any:
        audience = await self._coupons.audience(*key)
        if audience is not None:
            if len(self._audiences) >= 10_000:
                self._audiences.pop(next(iter(self._audiences)))
            self._audiences[key] = audience
        return audience
