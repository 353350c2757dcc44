"""Commitment card use cases that count on a card: the discount applied at checkout, payments
counted and refunds taken off (offers, acceptance and the deadline sweep: ``commitment``).

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
from kit.errors import InvalidInput

from coupons.adapters import commitment_events as events
from coupons.adapters import commitment_purchases as purchases
from coupons.adapters import commitment_repository as repo
from coupons.adapters import merges
from coupons.adapters.commitment_repository import CardRow
from coupons.domain.commitment import count_purchase, still_counts

#: A discount applied at checkout whose payment never came stops holding a purchase after this.
UNPAID_DISCOUNT_LAPSES = timedelta(days=1)


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
