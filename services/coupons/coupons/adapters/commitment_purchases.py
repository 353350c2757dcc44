"""SQL for what counts on commitment cards: discounts applied at checkout, the purchases that
counted, and refunds (which may come before their payment), and the per-payment locks that
keep a payment and its refunds apart (``hold_payments``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from kit.db import Connection

#: Advisory lock namespace (first key) of the per-payment locks: not the member locks'
#: (``merges.LOCK_SPACE``) nor the sweep's (a one-key lock, a space of its own).
PAYMENT_LOCK_SPACE = 0x436D5478  # "CmTx"


@dataclass(frozen=True)
class Application:
    application_id: str
    card_id: str
    discount_fen: int
    order_amount_fen: int


# -- applied discounts and purchases --------------------------------------------------------


async def find_application(
    conn: Connection, mall_id: str, store_id: str, request_id: str
) -> Application | None:
    row = await conn.fetchrow(
        """SELECT application_id, card_id, discount_fen, order_amount_fen
             FROM commitment_applications
            WHERE mall_id = $1 AND store_id = $2 AND request_id = $3""",
        mall_id,
        store_id,
        request_id,
    )
    if row is None:
        return None
    return Application(
        str(row["application_id"]),
        str(row["card_id"]),
        row["discount_fen"],
        row["order_amount_fen"],
    )


async def open_applications(conn: Connection, mall_id: str, card_id: str, since: datetime) -> int:
    """Discounts applied on the card since ``since`` whose payment has not come yet."""
    count = await conn.fetchval(
        """SELECT count(*) FROM commitment_applications
            WHERE mall_id = $1 AND card_id = $2 AND transaction_id IS NULL AND applied_at > $3""",
        mall_id,
        uuid.UUID(card_id),
        since,
    )
    return int(count)


async def add_application(
    conn: Connection,
    mall_id: str,
    card_id: str,
    store_id: str,
    request_id: str,
    order_amount_fen: int,
    discount_fen: int,
    applied_at: datetime,
) -> Application:
    application_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO commitment_applications
               (mall_id, application_id, card_id, store_id, request_id, order_amount_fen,
                discount_fen, applied_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        mall_id,
        application_id,
        uuid.UUID(card_id),
        store_id,
        request_id,
        order_amount_fen,
        discount_fen,
        applied_at,
    )
    return Application(str(application_id), card_id, discount_fen, order_amount_fen)


async def take_application(
    conn: Connection,
    mall_id: str,
    card_id: str,
    store_id: str,
    amount_paid_fen: int,
    transaction_id: str,
) -> int:
    """Match the payment to the oldest open discount applied on this card at this store for an
    order that the payment settles (order − discount = amount paid); the discount given, or
    0 when the POS applied none."""
    discount = await conn.fetchval(
        """WITH hit AS (
             SELECT application_id FROM commitment_applications
              WHERE mall_id = $1 AND card_id = $2 AND store_id = $3 AND transaction_id IS NULL
                AND order_amount_fen - discount_fen = $4
              ORDER BY applied_at, application_id
              LIMIT 1
                FOR UPDATE)
           UPDATE commitment_applications a SET transaction_id = $5
             FROM hit WHERE a.mall_id = $1 AND a.application_id = hit.application_id
           RETURNING a.discount_fen""",
        mall_id,
        uuid.UUID(card_id),
        store_id,
        amount_paid_fen,
        transaction_id,
    )
    return int(discount or 0)


async def add_purchase(
    conn: Connection,
    mall_id: str,
    card_id: str,
    transaction_id: str,
    store_id: str,
    amount_fen: int,
    discount_fen: int,
    paid_at: datetime,
    number: int,
    refunded_fen: int,
) -> bool:
    """Record a counted purchase with what refunds that came before it took off already (a
    later refund adds to that); False if this payment already counted on this card."""
    inserted = await conn.fetchval(
        """INSERT INTO commitment_purchases
               (mall_id, card_id, transaction_id, store_id, amount_fen, discount_fen, paid_at,
                number, refunded_fen)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT DO NOTHING RETURNING true""",
        mall_id,
        uuid.UUID(card_id),
        transaction_id,
        store_id,
        amount_fen,
        discount_fen,
        paid_at,
        number,
        refunded_fen,
    )
    return bool(inserted)


# -- a payment and its refunds, one at a time -----------------------------------------------


async def hold_payments(conn: Connection, payments: Iterable[tuple[str, str]]) -> None:
    """Lock the payments ``(mall_id, transaction_id)`` until the transaction ends, so that a
    payment's counting and its refunds, handled by two consumers, never run at once: the one
    that comes second waits and then reads the rows the first committed (neither sees the
    other's uncommitted row, so both at once lost the refund). All in one statement, in key
    order, before any row lock (the order: ``service_layer.commitment_purchases``); at most a
    batch's worth of locks (distinct payments hashed alike just share one)."""
    await conn.execute(
        """SELECT pg_advisory_xact_lock($1::int, h)
             FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest($2::text[]) AS k) AS keys
            ORDER BY h""",
        PAYMENT_LOCK_SPACE,
        sorted({f"{mall_id}:{transaction_id}" for mall_id, transaction_id in payments}),
    )


# -- refunds --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountedPurchase:
    card_id: str
    amount_fen: int
    discount_fen: int
    refunded_fen: int


async def add_refund(
    conn: Connection, mall_id: str, refund_id: str, transaction_id: str, amount_fen: int
) -> bool:
    """Record a refund; False if seen before."""
    done = await conn.fetchval(
        """INSERT INTO commitment_refunds (mall_id, refund_id, transaction_id, amount_fen)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true""",
        mall_id,
        refund_id,
        transaction_id,
        amount_fen,
    )
    return bool(done)


async def refunded_fen(conn: Connection, mall_id: str, transaction_id: str) -> int:
    """What has been refunded of a payment so far (refunds can precede their payment)."""
    total = await conn.fetchval(
        """SELECT COALESCE(sum(amount_fen), 0) FROM commitment_refunds
            WHERE mall_id = $1 AND transaction_id = $2""",
        mall_id,
        transaction_id,
    )
    return int(total)


async def refund_purchases(
    conn: Connection, mall_id: str, transaction_id: str, amount_fen: int
) -> list[CountedPurchase]:
    """Add a refund to every counted purchase of the payment; the purchases after it."""
    # Lock them first, in card order (as a merge's fold does,
    # ``commitment_merges.move_commitment_cards``), then update in a statement of its own: one
    # waiting on a fold reads the purchases as the fold left them (moved to the kept card, or
    # the copy it dropped gone).
    await conn.execute(
        """SELECT 1 FROM commitment_purchases
            WHERE mall_id = $1 AND transaction_id = $2 AND voided_at IS NULL
            ORDER BY card_id FOR UPDATE""",
        mall_id,
        transaction_id,
    )
    rows = await conn.fetch(
        """UPDATE commitment_purchases SET refunded_fen = refunded_fen + $3
            WHERE mall_id = $1 AND transaction_id = $2 AND voided_at IS NULL
           RETURNING card_id, amount_fen, discount_fen, refunded_fen""",
        mall_id,
        transaction_id,
        amount_fen,
    )
    return [
        CountedPurchase(str(r["card_id"]), r["amount_fen"], r["discount_fen"], r["refunded_fen"])
        for r in rows
    ]


async def void_purchase(
    conn: Connection, mall_id: str, card_id: str, transaction_id: str, discount_fen: int
) -> None:
    """A purchase that no longer counts: voided, taken off its (active) card's progress."""
    await conn.execute(
        """UPDATE commitment_purchases SET voided_at = now()
            WHERE mall_id = $1 AND card_id = $2 AND transaction_id = $3""",
        mall_id,
        uuid.UUID(card_id),
        transaction_id,
    )
    await conn.execute(
        """UPDATE commitment_cards
              SET purchases_made = purchases_made - 1,
                  discount_given_fen = discount_given_fen - $3
            WHERE mall_id = $1 AND card_id = $2""",
        mall_id,
        uuid.UUID(card_id),
        discount_fen,
    )
