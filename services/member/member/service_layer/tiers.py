"""Tier changes: up on the payment that earns it, down only at the member's review date."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

import structlog
from eventbus.outbox import OutgoingEvent, add_events
from kit.db import Connection
from kit.errors import InvalidInput, NotFound

from member.adapters import join_events, tiers
from member.domain.benefits import Benefit
from member.domain.model import Attribution
from member.domain.tiers import TierLadder, next_review, spend_window_start

log = structlog.get_logger(__name__)

Attributed = tuple[Attribution, dict[str, str]]


async def apply_spend(
    conn: Connection, attributed: Sequence[Attributed], now: datetime
) -> list[tuple[Attribution, dict[str, str], list[OutgoingEvent]]]:
    """After these payments are recorded (same transaction): upgrade members whose rolling
    12-month spend now reaches a higher tier. Each attribution comes back carrying the tier
    after its own payment, with the ``member.tier.changed`` events that payment caused."""
    if not attributed:
        return []
    keys = [(a.store.mall_id, a.member.member_id) for a, _ in attributed]
    ladders = await tiers.ladders(conn, [k[0] for k in keys])
    current = await tiers.lock_members(conn, keys)  # then read spend: sees committed payments
    since = spend_window_start(now)
    spend = await tiers.spends(conn, keys, since)
    for a, _ in attributed:  # spend before this batch, then add its payments in order
        if a.payment.paid_at > since:
            spend[(a.store.mall_id, a.member.member_id)] -= a.payment.amount_fen
    changed: set[tuple[str, str]] = set()
    lines: dict[str, dict[str, tuple[Benefit, ...]]] = {}
    out: list[tuple[Attribution, dict[str, str], list[OutgoingEvent]]] = []
    for a, headers in attributed:
        key = (a.store.mall_id, a.member.member_id)
        if a.payment.paid_at > since:
            spend[key] += a.payment.amount_fen
        before: list[OutgoingEvent] = []
        up = ladders[key[0]].upgrade(current[key], spend[key])
        if up is not None:
            if key[0] not in lines:
                lines[key[0]] = await tiers.benefits(conn, key[0])
            before += join_events.tier_change_events(
                ladder=ladders[key[0]],
                benefits=lines[key[0]],
                mall_id=key[0],
                member_id=key[1],
                previous=current[key],
                current=up.tier_code,
                reason="spend",
                at=now,
                headers=headers,
            )
            current[key] = up.tier_code
            changed.add(key)
        member = dataclasses.replace(a.member, tier_code=current[key])
        out.append((dataclasses.replace(a, member=member), headers, before))
    for mall_id, member_id in sorted(changed):
        await tiers.set_tier(
            conn, mall_id, member_id, current[(mall_id, member_id)], next_review(now)
        )
    return out


async def review_tiers(conn: Connection, mall_id: str, now: datetime) -> list[tuple[str, str, str]]:
    """Inside the caller's transaction: members whose review date has come take the tier
    their rolling spend earns now (down, or kept), and their next review is set a year on
    (none once at the lowest tier). Running it twice reviews nobody twice.
    Returns (member_id, previous, new) of those whose tier changed."""
    due = await tiers.due_for_review(conn, mall_id, now)
    if not due:
        return []
    ladder = (await tiers.ladders(conn, [mall_id]))[mall_id]
    lines = await tiers.benefits(conn, mall_id)
    spend = await tiers.spends(conn, [(mall_id, m) for m in due], spend_window_start(now))
    outgoing: list[OutgoingEvent] = []
    changes: list[tuple[str, str, str]] = []
    for member_id, tier_code in due.items():
        earned = ladder.earned(spend[(mall_id, member_id)])
        review_at = None if earned == ladder.lowest else next_review(now)
        await tiers.set_tier(conn, mall_id, member_id, earned.tier_code, review_at)
        if earned.tier_code != tier_code:
            changes.append((member_id, tier_code, earned.tier_code))
            outgoing += join_events.tier_change_events(
                ladder=ladder,
                benefits=lines,
                mall_id=mall_id,
                member_id=member_id,
                previous=tier_code,
                current=earned.tier_code,
                reason="review",
                at=now,
            )
    await add_events(conn, outgoing)
    log.info("tiers_reviewed", mall_id=mall_id, due=len(due), changed=len(changes))
    return changes


async def set_tier_benefits(
    conn: Connection, mall_id: str, tier_code: str, lines: Sequence[Benefit]
) -> None:
    """Inside the caller's transaction: the tier's benefits become exactly ``lines``."""
    if len({b.benefit_code for b in lines}) != len(lines):
        raise InvalidInput("duplicate_benefit", "each benefit code once per tier")
    await tiers.ladders(conn, [mall_id])  # a mall's default ladder is seeded on first use
    if not await tiers.replace_benefits(conn, mall_id, tier_code, lines):
        raise NotFound("unknown_tier", f"mall {mall_id} has no tier {tier_code}")


async def tier_card(
    conn: Connection, mall_id: str, tier_code: str
) -> tuple[TierLadder, tuple[Benefit, ...]]:
    """The mall's ladder and what ``tier_code`` gives (for the POS and the shopper's card)."""
    ladder = (await tiers.ladders(conn, [mall_id]))[mall_id]
    return ladder, (await tiers.benefits(conn, mall_id)).get(tier_code, ())
