"""SQL for commitment cards: offers, cards, applied discounts, counted purchases, and the
local copy of the directory slice (credentials, stores) the commitment RPCs check against."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kit.db import Connection

from coupons.domain.commitment import Card, CardStatus, OfferTerms


@dataclass(frozen=True)
class Offer:
    mall_id: str
    offer_id: str
    tenant_id: str
    terms: OfferTerms
    created_at: datetime


@dataclass(frozen=True)
class CardRow:
    mall_id: str
    card_id: str
    offer_id: str
    tenant_id: str
    member_id: str
    appid: str
    openid: str
    card: Card
    settled_at: datetime | None
    reminded_at: datetime | None


@dataclass(frozen=True)
class Application:
    application_id: str
    card_id: str
    discount_fen: int
    order_amount_fen: int


# -- directory slice ------------------------------------------------------------------------


async def put_credential(
    conn: Connection,
    credential_id: str,
    mall_id: str,
    tenant_id: str,
    secret_hash: str,
    revoked: bool,
) -> None:
    await conn.execute(
        """INSERT INTO commitment_credentials
               (credential_id, mall_id, tenant_id, secret_hash, revoked)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (credential_id) DO UPDATE
              SET mall_id = EXCLUDED.mall_id, tenant_id = EXCLUDED.tenant_id,
                  secret_hash = EXCLUDED.secret_hash, revoked = EXCLUDED.revoked""",
        credential_id,
        mall_id,
        tenant_id,
        secret_hash,
        revoked,
    )


async def get_credential(conn: Connection, credential_id: str) -> tuple[str, str, str] | None:
    """``(mall_id, tenant_id, secret_hash)`` of a valid credential, None if unknown/revoked."""
    row = await conn.fetchrow(
        """SELECT mall_id, tenant_id, secret_hash FROM commitment_credentials
            WHERE credential_id = $1 AND NOT revoked""",
        credential_id,
    )
    return None if row is None else (row["mall_id"], row["tenant_id"], row["secret_hash"])


async def put_store(conn: Connection, mall_id: str, store_id: str, tenant_id: str) -> None:
    await conn.execute(
        """INSERT INTO commitment_stores (mall_id, store_id, tenant_id) VALUES ($1, $2, $3)
           ON CONFLICT (mall_id, store_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id""",
        mall_id,
        store_id,
        tenant_id,
    )


async def store_tenants(conn: Connection, mall_id: str, store_ids: Sequence[str]) -> dict[str, str]:
    rows = await conn.fetch(
        """SELECT store_id, tenant_id FROM commitment_stores
            WHERE mall_id = $1 AND store_id = ANY($2::text[])""",
        mall_id,
        list(store_ids),
    )
    return {r["store_id"]: r["tenant_id"] for r in rows}


# -- offers ---------------------------------------------------------------------------------


def _offer(row: Any) -> Offer:
    return Offer(
        row["mall_id"],
        row["offer_id"],
        row["tenant_id"],
        OfferTerms(
            row["title"],
            tuple(row["store_ids"]),
            row["purchases_required"],
            row["window_days"],
            row["min_amount_fen"],
            row["discount_fen"],
        ),
        row["created_at"],
    )


async def create_offer(
    conn: Connection, mall_id: str, tenant_id: str, request_id: str, terms: OfferTerms
) -> Offer:
    """Insert, or return the offer this request id already created."""
    row = await conn.fetchrow(
        """WITH new AS (
             INSERT INTO commitment_offers
                 (mall_id, offer_id, tenant_id, request_id, title, store_ids,
                  purchases_required, window_days, min_amount_fen, discount_fen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (mall_id, tenant_id, request_id) DO NOTHING
             RETURNING *)
           SELECT * FROM new
           UNION ALL
           SELECT * FROM commitment_offers
            WHERE mall_id = $1 AND tenant_id = $3 AND request_id = $4
           LIMIT 1""",
        mall_id,
        f"offer-{uuid.uuid4().hex[:16]}",
        tenant_id,
        request_id,
        terms.title,
        list(terms.store_ids),
        terms.purchases_required,
        terms.window_days,
        terms.min_amount_fen,
        terms.discount_fen,
    )
    assert row is not None
    return _offer(row)


async def get_offer(conn: Connection, mall_id: str, offer_id: str) -> Offer | None:
    row = await conn.fetchrow(
        "SELECT * FROM commitment_offers WHERE mall_id = $1 AND offer_id = $2", mall_id, offer_id
    )
    return None if row is None else _offer(row)


# -- cards ----------------------------------------------------------------------------------


def _card(row: Any) -> CardRow:
    return CardRow(
        mall_id=row["mall_id"],
        card_id=str(row["card_id"]),
        offer_id=row["offer_id"],
        tenant_id=row["tenant_id"],
        member_id=row["member_id"],
        appid=row["appid"],
        openid=row["openid"],
        card=Card(
            card_id=str(row["card_id"]),
            store_ids=tuple(row["store_ids"]),
            purchases_required=row["purchases_required"],
            min_amount_fen=row["min_amount_fen"],
            discount_fen=row["discount_fen"],
            accepted_at=row["accepted_at"],
            deadline=row["deadline"],
            status=CardStatus(row["status"]),
            purchases_made=row["purchases_made"],
            discount_given_fen=row["discount_given_fen"],
        ),
        settled_at=row["settled_at"],
        reminded_at=row["reminded_at"],
    )


async def accept_card(
    conn: Connection,
    offer: Offer,
    member_id: str,
    appid: str,
    openid: str,
    accepted_at: datetime,
) -> tuple[CardRow, bool]:
    """The member's card of the offer, and whether it was created now."""
    t = offer.terms
    row = await conn.fetchrow(
        """INSERT INTO commitment_cards
               (mall_id, card_id, offer_id, tenant_id, member_id, store_ids, purchases_required,
                min_amount_fen, discount_fen, appid, openid, accepted_at, deadline)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
           ON CONFLICT (mall_id, offer_id, member_id) DO NOTHING
           RETURNING *""",
        offer.mall_id,
        uuid.uuid4(),
        offer.offer_id,
        offer.tenant_id,
        member_id,
        list(t.store_ids),
        t.purchases_required,
        t.min_amount_fen,
        t.discount_fen,
        appid,
        openid,
        accepted_at,
        t.deadline(accepted_at),
    )
    if row is not None:
        return _card(row), True
    row = await conn.fetchrow(
        """SELECT * FROM commitment_cards
            WHERE mall_id = $1 AND offer_id = $2 AND member_id = $3""",
        offer.mall_id,
        offer.offer_id,
        member_id,
    )
    assert row is not None
    return _card(row), False


async def get_card(conn: Connection, mall_id: str, card_id: str) -> CardRow | None:
    row = await conn.fetchrow(
        "SELECT * FROM commitment_cards WHERE mall_id = $1 AND card_id = $2",
        mall_id,
        uuid.UUID(card_id),
    )
    return None if row is None else _card(row)


async def member_cards(
    conn: Connection, mall_id: str, member_id: str, limit: int = 100
) -> list[CardRow]:
    rows = await conn.fetch(
        """SELECT * FROM commitment_cards WHERE mall_id = $1 AND member_id = $2
            ORDER BY accepted_at DESC, card_id LIMIT $3""",
        mall_id,
        member_id,
        limit,
    )
    return [_card(r) for r in rows]


async def lock_active_cards(
    conn: Connection, mall_id: str, member_id: str, store_id: str
) -> list[CardRow]:
    """The member's active cards that apply at the store, locked, oldest first."""
    rows = await conn.fetch(
        """SELECT * FROM commitment_cards
            WHERE mall_id = $1 AND member_id = $2 AND status = 'active'
              AND $3 = ANY(store_ids)
            ORDER BY accepted_at, card_id
              FOR UPDATE""",
        mall_id,
        member_id,
        store_id,
    )
    return [_card(r) for r in rows]


async def record_progress(
    conn: Connection,
    mall_id: str,
    card_id: str,
    made: int,
    given: int,
    fulfilled_at: datetime | None,
) -> None:
    await conn.execute(
        """UPDATE commitment_cards
              SET purchases_made = $3, discount_given_fen = $4,
                  status = CASE WHEN $5::timestamptz IS NULL THEN status ELSE 'fulfilled' END,
                  settled_at = COALESCE($5, settled_at)
            WHERE mall_id = $1 AND card_id = $2""",
        mall_id,
        uuid.UUID(card_id),
        made,
        given,
        fulfilled_at,
    )


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


# -- the deadline sweep and reminders (across malls, like the outbox relay) ------------------


async def fail_due(
    conn: Connection, now: datetime, deadline_before: datetime, limit: int
) -> list[CardRow]:
    """Mark up to ``limit`` active cards whose deadline is at or before ``deadline_before``
    as failed (at ``now``); the rows locked with SKIP LOCKED, so concurrent sweeps take
    different cards."""
    rows = await conn.fetch(
        """WITH due AS (
             SELECT mall_id, card_id FROM commitment_cards
              WHERE status = 'active' AND deadline <= $2
              ORDER BY deadline
              LIMIT $3
                FOR UPDATE SKIP LOCKED)
           UPDATE commitment_cards c SET status = 'failed', settled_at = $1
             FROM due WHERE c.mall_id = due.mall_id AND c.card_id = due.card_id
           RETURNING c.*""",
        now,
        deadline_before,
        limit,
    )
    return [_card(r) for r in rows]


async def mark_reminders(
    conn: Connection, now: datetime, until: datetime, limit: int
) -> list[CardRow]:
    """Stamp up to ``limit`` active cards whose deadline is in [now, until) and not reminded."""
    rows = await conn.fetch(
        """WITH due AS (
             SELECT mall_id, card_id FROM commitment_cards
              WHERE status = 'active' AND reminded_at IS NULL
                AND deadline > $1 AND deadline <= $2
              ORDER BY deadline
              LIMIT $3
                FOR UPDATE SKIP LOCKED)
           UPDATE commitment_cards c SET reminded_at = $1
             FROM due WHERE c.mall_id = due.mall_id AND c.card_id = due.card_id
           RETURNING c.*""",
        now,
        until,
        limit,
    )
    return [_card(r) for r in rows]


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


async def lock_card(conn: Connection, mall_id: str, card_id: str) -> CardRow | None:
    row = await conn.fetchrow(
        "SELECT * FROM commitment_cards WHERE mall_id = $1 AND card_id = $2 FOR UPDATE",
        mall_id,
        uuid.UUID(card_id),
    )
    return None if row is None else _card(row)


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
