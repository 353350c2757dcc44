"""SQL for what counts on commitment cards: discounts applied at checkout, the purchases that
counted, and refunds (which may come before their payment)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from kit.db import Connection


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
) -> bool:
    """Record a counted purchase; False if this payment already counted on this card."""
    inserted = await conn.fetchval(
        """INSERT INTO commitment_purchases
               (mall_id, card_id, transaction_id, store_id, amount_fen, discount_fen, paid_at,
                number)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT DO NOTHING RETURNING true""",
        mall_id,
        uuid.UUID(card_id),
        transaction_id,
        store_id,
        amount_fen,
        discount_fen,
        paid_at,
        number,
    )
    return bool(inserted)


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
    # Lock them first, in card order (as a merge's fold does, ``merges.move_commitment_cards``),
    # then update in a statement of its own: one waiting on a fold reads the purchases as the
    # fold left them (moved to the kept card, or the copy it dropped gone).
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
