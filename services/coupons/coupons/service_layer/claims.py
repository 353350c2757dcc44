"""Claiming coupons, many at once: the flash grab (抢券) and every other way a member gets one.

One batch, one transaction. Claims are judged in memory first (window, audience, stocks known
sold out); the rest compete, in the order given (first come, first served), for the member and
daily limits and the stock's counter, each read under a row lock and written once for the whole
batch — the stock's hot row moves once per batch, never once per claim. Once a stock is known
exhausted, this process answers "sold out" from memory (for a few seconds at a time); the
database stays the truth.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import asyncpg
import structlog
from eventbus.outbox import OutgoingEvent, add_events
from kit import context
from kit.db import Connection

from coupons.adapters import claims as sql
from coupons.adapters import events
from coupons.adapters import merges as merges_sql
from coupons.adapters import stocks as stocks_sql
from coupons.domain.claims import (
    DAY_LIMIT_REACHED,
    DAY_SOLD_OUT,
    LIMIT_REACHED,
    SOLD_OUT,
    Claim,
    Outcome,
    Refusal,
    judge,
    malformed,
    new_coupon_id,
)
from coupons.domain.coupons import Coupon
from coupons.domain.stocks import Stock
from coupons.service_layer.sold_out import SoldOutMemory

log = structlog.get_logger(__name__)

MALL_ZONE = ZoneInfo("Asia/Shanghai")
_ATTEMPTS = 4


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    coupon: Coupon | None = None
    reason: str = ""
    message: str = ""

    @classmethod
    def refused(cls, refusal: Refusal) -> Result:
        return cls(refusal.outcome, None, refusal.reason, refusal.message)


def mall_day(mall_id: str, now: datetime) -> date:
    """The mall's calendar day (daily limits); Asia/Shanghai for every mall for now."""
    return now.astimezone(MALL_ZONE).date()


#: Exhausted stocks up to this size keep their holders' keys in memory (a few MB at most).
HOLDERS_IN_MEMORY = 50_000


async def _remember_exhausted(
    conn: Connection, memory: SoldOutMemory, key: tuple[str, str], issuable: int
) -> None:
    if memory.holders(key) is not None or memory.disabled:
        return
    if issuable <= HOLDERS_IN_MEMORY:
        memory.remember(key, await sql.holders(conn, key[0], key[1]))
    else:
        memory.remember(key)


class _Collision(Exception):
    """A concurrent batch claimed one of our keys first: roll back and answer again."""


class _Merged(Exception):
    """Claimants were merged into other members: roll back and claim for the survivors."""

    def __init__(self, survivors: dict[tuple[str, str], str]) -> None:
        super().__init__(f"{len(survivors)} claimant(s) merged")
        self.survivors = survivors


def _for_survivors(claims: Sequence[Claim], survivors: dict[tuple[str, str], str]) -> list[Claim]:
    """The claims, those naming an absorbed member made for its survivor."""
    return [
        replace(c, member_id=survivors[(c.mall_id, c.member_id)])
        if (c.mall_id, c.member_id) in survivors
        else c
        for c in claims
    ]


async def claim_batch(
    conn: Connection,
    claims: Sequence[Claim],
    *,
    memory: SoldOutMemory | None = None,
    now: datetime | None = None,
    headers: Sequence[dict[str, str]] | None = None,
    day_of: Callable[[str, datetime], date] = mall_day,
) -> list[Result]:
    """One result per claim, in order. ``headers`` are each claim's correlation headers (a
    batch consumer passes each cause's own); by default the bound context's. A claim naming a
    member merged into another is made for the survivor (the coupon says whose it is)."""
    memory = memory or SoldOutMemory(ttl_s=0)
    results: list[Result | None] = [None] * len(claims)
    first: dict[tuple[str, str, str], int] = {}
    duplicates: dict[int, int] = {}
    for i, claim in enumerate(claims):
        refusal = malformed(claim)
        if refusal is not None:
            results[i] = Result.refused(refusal)
        elif claim.key in first:
            duplicates[i] = first[claim.key]
        else:
            first[claim.key] = i
    live = list(first.values())
    for attempt in range(_ATTEMPTS):
        try:
            await _answer(conn, claims, live, results, memory, now, headers, day_of)
            break
        except (_Collision, _Merged, asyncpg.DeadlockDetectedError) as exc:
            if attempt == _ATTEMPTS - 1:
                raise
            log.info("claim_batch_retry", reason=type(exc).__name__, attempt=attempt + 1)
            if isinstance(exc, _Merged):
                claims = _for_survivors(claims, exc.survivors)
            for i in live:
                results[i] = None
    for i, j in duplicates.items():
        results[i] = results[j]
    return [r if r is not None else Result(Outcome.INVALID, None, "internal") for r in results]


async def _answer(
    conn: Connection,
    claims: Sequence[Claim],
    live: list[int],
    results: list[Result | None],
    memory: SoldOutMemory,
    now: datetime | None,
    headers: Sequence[dict[str, str]] | None,
    day_of: Callable[[str, datetime], date],
) -> None:
    # A retried claim gets its coupon back, whatever the stock's state now; on a stock known
    # exhausted with its holders in memory, any other claim is sold out without a query.
    lookups: list[int] = []
    for i in live:
        claim = claims[i]
        holders = memory.holders((claim.mall_id, claim.stock_id))
        if holders is not None and (claim.member_id, claim.request_id) not in holders:
            results[i] = Result.refused(SOLD_OUT)
        else:
            lookups.append(i)
    if not lookups:
        return
    found = await sql.earlier(conn, [claims[i].key for i in lookups])
    pending: list[int] = []
    for i in lookups:
        claim = claims[i]
        coupon = found.get(claim.key)
        if coupon is not None:
            if coupon.stock_id != claim.stock_id:
                results[i] = Result(
                    Outcome.INVALID, None, "request_id_reused", "request_id names another claim"
                )
            else:
                results[i] = Result(Outcome.CLAIMED, coupon)
        elif memory.known((claim.mall_id, claim.stock_id)):
            results[i] = Result.refused(SOLD_OUT)
        else:
            pending.append(i)
    if not pending:
        return
    now = now or datetime.now(UTC)
    stocks = await stocks_sql.get_many(
        conn, sorted({(claims[i].mall_id, claims[i].stock_id) for i in pending})
    )
    contenders: list[int] = []
    for i in pending:
        claim = claims[i]
        stock = stocks.get((claim.mall_id, claim.stock_id))
        refusal = judge(claim, stock, now)
        if refusal is SOLD_OUT and stock is not None:
            await _remember_exhausted(conn, memory, (stock.mall_id, stock.stock_id), stock.issuable)
        elif refusal is None and stock is not None and stock.max_per_day:
            day_key = (claim.mall_id, claim.stock_id, day_of(claim.mall_id, now).isoformat())
            if memory.known(day_key):
                refusal = DAY_SOLD_OUT
        if refusal is not None:
            results[i] = Result.refused(refusal)
        else:
            contenders.append(i)
    if contenders:
        await _compete(conn, claims, contenders, stocks, results, memory, now, headers, day_of)


async def _compete(
    conn: Connection,
    claims: Sequence[Claim],
    contenders: list[int],
    stocks: dict[tuple[str, str], Stock],
    results: list[Result | None],
    memory: SoldOutMemory,
    now: datetime,
    headers: Sequence[dict[str, str]] | None,
    day_of: Callable[[str, datetime], date],
) -> None:
    def stock_of(i: int) -> Stock:
        return stocks[(claims[i].mall_id, claims[i].stock_id)]

    def member_key(i: int) -> tuple[str, str, str]:
        return (claims[i].mall_id, claims[i].stock_id, claims[i].member_id)

    def day_key(i: int) -> tuple[str, str, date]:
        return (claims[i].mall_id, claims[i].stock_id, day_of(claims[i].mall_id, now))

    def member_day_key(i: int) -> tuple[str, str, str, date]:
        c = claims[i]
        return (c.mall_id, c.stock_id, c.member_id, day_of(c.mall_id, now))

    limited = [i for i in contenders if stock_of(i).max_per_member]
    member_daily = [i for i in contenders if stock_of(i).max_per_member_per_day]
    daily = [i for i in contenders if stock_of(i).max_per_day]
    won: list[int] = []
    outgoing: list[OutgoingEvent] = []
    exhausted: list[Stock] = []
    days_out: set[tuple[str, str, date]] = set()
    async with conn.transaction():
        # First, against merges: a claimant merged meanwhile is claimed for as its survivor.
        merged = await merges_sql.hold_members(
            conn, sorted({(claims[i].mall_id, claims[i].member_id) for i in contenders})
        )
        if merged:
            raise _Merged(merged)
        member_counts = await sql.lock_member_counts(conn, [member_key(i) for i in limited])
        member_day_counts = await sql.lock_member_day_counts(
            conn, [member_day_key(i) for i in member_daily]
        )
        day_counts = await sql.lock_day_counts(conn, [day_key(i) for i in daily])
        stock_counts = await sql.lock_stock_counts(
            conn, [(claims[i].mall_id, claims[i].stock_id) for i in contenders]
        )
        more_member: Counter[tuple[str, str, str]] = Counter()
        more_member_day: Counter[tuple[str, str, str, date]] = Counter()
        more_day: Counter[tuple[str, str, date]] = Counter()
        more_stock: Counter[tuple[str, str]] = Counter()
        for i in contenders:
            stock = stock_of(i)
            skey = (stock.mall_id, stock.stock_id)
            claimed, issuable = stock_counts[skey]
            if claimed + more_stock[skey] >= issuable:
                results[i] = Result.refused(SOLD_OUT)
                continue
            if stock.max_per_day:
                dk = day_key(i)
                if day_counts[dk] + more_day[dk] >= stock.max_per_day:
                    days_out.add(dk)
                    results[i] = Result.refused(DAY_SOLD_OUT)
                    continue
            if stock.max_per_member:
                mk = member_key(i)
                if member_counts[mk] + more_member[mk] >= stock.max_per_member:
                    results[i] = Result.refused(LIMIT_REACHED)
                    continue
            if stock.max_per_member_per_day:
                mdk = member_day_key(i)
                if member_day_counts[mdk] + more_member_day[mdk] >= stock.max_per_member_per_day:
                    results[i] = Result.refused(DAY_LIMIT_REACHED)
                    continue
                more_member_day[mdk] += 1
            if stock.max_per_member:
                more_member[member_key(i)] += 1
            if stock.max_per_day:
                more_day[day_key(i)] += 1
            more_stock[skey] += 1
            won.append(i)
        if won:
            rows = []
            for i in won:
                claim, stock = claims[i], stock_of(i)
                valid_from, valid_until = stock.validity(now)
                coupon = Coupon(
                    mall_id=claim.mall_id,
                    coupon_id=new_coupon_id(),
                    stock_id=claim.stock_id,
                    tenant_id=stock.tenant_id,
                    member_id=claim.member_id,
                    status="available",
                    channel=claim.channel.value,
                    terms=stock.terms,
                    claimed_at=now,
                    valid_from=valid_from,
                    valid_until=valid_until,
                    guide_id=claim.guide_id,
                    transaction_id=claim.transaction_id,
                )
                results[i] = Result(Outcome.CLAIMED, coupon)
                rows.append(
                    (claim, coupon.coupon_id, stock.tenant_id, now, valid_from, valid_until)
                )
                cause = headers[i] if headers is not None else context.current()
                outgoing.append(events.coupon_claimed(coupon, cause, claim.points_hold_id))
            if await sql.insert_coupons(conn, rows) != len(rows):
                raise _Collision()
            for skey, added in more_stock.items():
                claimed, issuable = stock_counts[skey]
                if claimed + added >= issuable:
                    stock = stocks[skey]
                    exhausted.append(stock)
                    outgoing.append(events.stock_exhausted(stock, context.current()))
            await sql.add_member_counts(conn, dict(more_member))
            await sql.add_member_day_counts(conn, dict(more_member_day))
            await sql.add_day_counts(conn, dict(more_day))
            await sql.add_stock_counts(conn, dict(more_stock))
            await add_events(conn, outgoing)
    for stock in exhausted:
        await _remember_exhausted(conn, memory, (stock.mall_id, stock.stock_id), stock.issuable)
    for mall_id, stock_id, day in days_out:
        memory.remember((mall_id, stock_id, day.isoformat()))
    for skey in stock_counts:
        claimed, issuable = stock_counts[skey]
        if claimed >= issuable:
            await _remember_exhausted(conn, memory, skey, issuable)
