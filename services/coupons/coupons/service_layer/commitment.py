"""Commitment card use cases: offer, accept, apply at checkout, count payments, and the
deadline sweep (fail + queue the clawback) with its reminders.

The sweep is safe on several replicas at once: a batch locks the cards it fails with SKIP
LOCKED and commits the failure, the clawback row and the event together, so each card fails
(and is clawed back, and announced) exactly once; the reminder stamps ``reminded_at`` the same
way. ``exclusive`` runs also take a transaction-level advisory lock so that replicas do not
even contend for rows.

Payments and refunds come through two consumers, so a payment and its refund can be handled in
either order or at once. A refund is recorded even before its payment; the payment counts by
what is left of it and is saved with that much refunded already, so later refunds add up. Both
batches lock their payments first (``purchases.hold_payments``), so the second of the two waits
and reads what the first committed. The lock order, so that no cycle forms:

1. members (``merges.hold_members``: payments and checkouts share them, a merge takes them);
2. payments (payment and refund batches; merges and checkouts take none);
3. rows: cards, or a payment's purchases and then cards (refunds, and a merge's fold).

Locks of 1 and of 2 are each taken in one statement, in key order, before any row lock: whoever
waits for one holds no row that another could be waiting for in turn.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from eventbus.outbox import OutgoingEvent, add_events
from kit.db import Connection
from kit.errors import Forbidden, InvalidInput, NotFound

from coupons.adapters import commitment_clawbacks as clawbacks
from coupons.adapters import commitment_events as events
from coupons.adapters import commitment_purchases as purchases
from coupons.adapters import commitment_repository as repo
from coupons.adapters import merges
from coupons.adapters.commitment_repository import CardRow, Offer
from coupons.domain.commitment import (
    DEFAULT_REMINDER,
    OfferTerms,
    clawback_fen,
    count_purchase,
    still_counts,
)
from coupons.service_layer.offers import StoreTenant

DEFAULT_BATCH = 500
#: How long after its deadline a card is settled: a payment made before the deadline still
#: counts when it reaches coupons a little later (consumer lag, a redelivery, member's queue).
DEFAULT_SETTLE_GRACE = timedelta(minutes=30)
#: A discount applied at checkout whose payment never came stops holding a purchase after this.
UNPAID_DISCOUNT_LAPSES = timedelta(days=1)
#: pg_try_advisory_xact_lock key of the periodic sweep: one replica works, the others skip.
SWEEP_LOCK = "coupons.commitment-sweep"


@dataclass(frozen=True)
class Payment:
    """What counting needs of ``member.payment.attributed``."""

    mall_id: str
    member_id: str
    store_id: str
    transaction_id: str
    amount_fen: int
    paid_at: datetime


@dataclass(frozen=True)
class Refund:
    """What un-counting needs of ``member.refund.attributed``."""

    mall_id: str
    refund_id: str
    transaction_id: str
    refund_amount_fen: int


@dataclass(frozen=True)
class Discount:
    discount_fen: int
    card: CardRow | None


async def create_offer(
    conn: Connection,
    mall_id: str,
    tenant_id: str,
    request_id: str,
    terms: OfferTerms,
    store_tenant: StoreTenant,
) -> Offer:
    """A tenant's offer, at its own stores only (``store_tenant`` answers from the directory
    copy, so the check reads no table)."""
    if not request_id or len(request_id) > 128:
        raise InvalidInput("invalid_request_id", "request_id is 1..128 characters")
    for store_id in terms.store_ids:
        if store_tenant(mall_id, store_id) != tenant_id:
            raise Forbidden("store_not_yours", f"store {store_id} is not a store of this tenant")
    return await repo.create_offer(conn, mall_id, tenant_id, request_id, terms)


async def accept_card(
    conn: Connection,
    mall_id: str,
    offer_id: str,
    member_id: str,
    appid: str,
    openid: str,
    now: datetime,
) -> CardRow:
    if not appid or not openid:
        raise InvalidInput(
            "missing_payer", "appid and openid are required: a clawback is deducted from them"
        )
    offer = await repo.get_offer(conn, mall_id, offer_id)
    if offer is None:
        raise NotFound("offer_not_found", f"no offer {offer_id} in mall {mall_id}")
    card, _ = await repo.accept_card(conn, offer, member_id, appid, openid, now)
    return card


async def apply_discount(
    conn: Connection,
    mall_id: str,
    member_id: str,
    store_id: str,
    order_amount_fen: int,
    request_id: str,
    now: datetime,
) -> Discount:
    """The discount for an order at checkout, recorded so the payment that follows is matched
    to it. The oldest active card of the member that applies gives it."""
    if order_amount_fen <= 0:
        raise InvalidInput("invalid_amount", "order_amount_fen must be positive")
    if not request_id or len(request_id) > 128:
        raise InvalidInput("invalid_request_id", "request_id is 1..128 characters")
    async with conn.transaction():
        survivor = await _hold_against_merges(conn, [(mall_id, member_id)])
        seen = await purchases.find_application(conn, mall_id, store_id, request_id)
        if seen is not None:
            return Discount(seen.discount_fen, await repo.get_card(conn, mall_id, seen.card_id))
        payer = survivor.get((mall_id, member_id), member_id)
        for row in await repo.lock_active_cards(conn, mall_id, payer, store_id):
            discount = row.card.discount_for(store_id, order_amount_fen, now)
            if discount:
                # Orders discounted but not paid yet hold their purchases: a card never gives
                # more discounts than the purchases it commits to (unpaid ones lapse in a day).
                awaited = await purchases.open_applications(
                    conn, mall_id, row.card_id, now - UNPAID_DISCOUNT_LAPSES
                )
                if row.card.purchases_made + awaited >= row.card.purchases_required:
                    continue
                await purchases.add_application(
                    conn,
                    mall_id,
                    row.card_id,
                    store_id,
                    request_id,
                    order_amount_fen,
                    discount,
                    now,
                )
                return Discount(discount, row)
    return Discount(0, None)


async def _hold_against_merges(
    conn: Connection, members: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Share-lock the members (and their known survivors) against merges, before any card is
    locked (the order a merge takes them in); the survivor of each member merged. The cards a
    member merged into another accepted are the survivor's now, and a merge committing while a
    payment or checkout waits moves them: it then uses the survivor's. An id that is not a
    UUID was never merged."""
    return await merges.hold_members(
        conn, sorted({m for m in members if _is_uuid(m[1])}), survivors_too=True
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def count_payments(
    conn: Connection, payments: Sequence[tuple[Payment, dict[str, str]]]
) -> int:
    """Count each payment on every active card of its payer it qualifies for (inside the
    consumer's transaction); return how many purchases counted."""
    survivor = await _hold_against_merges(conn, [(p.mall_id, p.member_id) for p, _ in payments])
    await purchases.hold_payments(conn, [(p.mall_id, p.transaction_id) for p, _ in payments])
    counted = 0
    out: list[OutgoingEvent] = []
    for payment, headers in payments:
        payer = survivor.get((payment.mall_id, payment.member_id), payment.member_id)
        rows = await repo.lock_active_cards(conn, payment.mall_id, payer, payment.store_id)
        # Refunds that came first: read under the payment's lock, so none is being added.
        refunded = (
            await purchases.refunded_fen(conn, payment.mall_id, payment.transaction_id)
            if rows
            else 0
        )
        for row in rows:
            if not row.card.open_at(payment.paid_at):
                continue
            discount = await purchases.take_application(
                conn,
                payment.mall_id,
                row.card_id,
                payment.store_id,
                payment.amount_fen,
                payment.transaction_id,
            )
            paid = payment.amount_fen - refunded
            if not row.card.counts(payment.store_id, paid, discount, payment.paid_at):
                continue
            progress = count_purchase(row.card, discount)
            if not await purchases.add_purchase(
                conn,
                payment.mall_id,
                row.card_id,
                payment.transaction_id,
                payment.store_id,
                payment.amount_fen,
                discount,
                payment.paid_at,
                progress.purchases_made,
                refunded,
            ):
                continue
            await repo.record_progress(
                conn,
                payment.mall_id,
                row.card_id,
                progress.purchases_made,
                progress.discount_given_fen,
                payment.paid_at if progress.fulfilled else None,
            )
            counted += 1
            out.append(
                events.progressed(
                    row, payment.transaction_id, progress.purchases_made, discount, headers
                )
            )
            if progress.fulfilled:
                out.append(events.fulfilled(row, progress.discount_given_fen, headers))
    await add_events(conn, out)
    return counted


async def refund_payments(
    conn: Connection, refunds: Sequence[tuple[Refund, dict[str, str]]]
) -> int:
    """Take refunded purchases off active cards (inside the consumer's transaction); a refund
    that comes before its payment is kept and applied when the payment counts. Return how
    many purchases stopped counting."""
    await purchases.hold_payments(conn, [(r.mall_id, r.transaction_id) for r, _ in refunds])
    voided = 0
    out: list[OutgoingEvent] = []
    for refund, headers in refunds:
        if not await purchases.add_refund(
            conn, refund.mall_id, refund.refund_id, refund.transaction_id, refund.refund_amount_fen
        ):
            continue
        refunded = await purchases.refund_purchases(
            conn, refund.mall_id, refund.transaction_id, refund.refund_amount_fen
        )
        for p in sorted(refunded, key=lambda p: p.card_id):
            row = await repo.lock_card(conn, refund.mall_id, p.card_id)
            if row is None or still_counts(row.card, p.amount_fen, p.discount_fen, p.refunded_fen):
                continue
            await purchases.void_purchase(
                conn, refund.mall_id, p.card_id, refund.transaction_id, p.discount_fen
            )
            voided += 1
            out.append(
                events.progressed(
                    row,
                    refund.transaction_id,
                    row.card.purchases_made - 1,
                    0,
                    headers,
                    refund_id=refund.refund_id,
                )
            )
    await add_events(conn, out)
    return voided


async def _locked(conn: Connection, exclusive: bool) -> bool:
    if not exclusive:
        return True
    return bool(
        await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", SWEEP_LOCK)
    )


async def fail_due(
    conn: Connection,
    now: datetime,
    limit: int = DEFAULT_BATCH,
    grace: timedelta = DEFAULT_SETTLE_GRACE,
) -> list[CardRow]:
    """One batch, in the caller's transaction: fail cards whose deadline passed ``grace``
    ago, queue the clawback of what each gave, announce each."""
    failed = await repo.fail_due(conn, now, now - grace, limit)
    out = []
    for row in failed:
        owed = clawback_fen(row.card)
        if owed > 0:
            await clawbacks.queue(
                conn,
                row.mall_id,
                row.card_id,
                row.member_id,
                row.appid,
                row.openid,
                owed,
                (row.card.accepted_at, row.card.deadline),
            )
        out.append(events.failed(row, owed))
    await add_events(conn, out)
    return failed


async def sweep(
    conn: Connection,
    now: datetime,
    *,
    remind_before: timedelta = DEFAULT_REMINDER,
    grace: timedelta = DEFAULT_SETTLE_GRACE,
    limit: int = DEFAULT_BATCH,
    exclusive: bool = False,
) -> tuple[int, int] | None:
    """Fail every card whose deadline passed ``grace`` before ``now``, then remind of the
    cards whose deadline is within ``remind_before``; ``(failed, reminded)``, or None when
    another replica holds the lock."""
    failed = reminded = 0
    while True:
        async with conn.transaction():
            if not await _locked(conn, exclusive):
                return None if not (failed or reminded) else (failed, reminded)
            batch = await fail_due(conn, now, limit, grace)
        failed += len(batch)
        if len(batch) < limit:
            break
    while True:
        async with conn.transaction():
            if not await _locked(conn, exclusive):
                return failed, reminded
            due = await repo.mark_reminders(conn, now, now + remind_before, limit)
            await add_events(conn, [events.expiring(row) for row in due])
        reminded += len(due)
        if len(due) < limit:
            return failed, reminded
