"""SQL for commitment cards: offers, cards, and the deadline sweep and reminders (applied
discounts and counted purchases: ``commitment_purchases``; stores' tenants come from the
directory copy, ``kit.directory``, not from here)."""

from __future__ import annotations

import uuid
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
    """The member's own card of the offer (not one a merge brought beside it), and whether it
    was created now."""
    t = offer.terms
    row = await conn.fetchrow(
        """INSERT INTO commitment_cards
               (mall_id, card_id, offer_id, tenant_id, member_id, store_ids, purchases_required,
                min_amount_fen, discount_fen, appid, openid, accepted_at, deadline)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
           ON CONFLICT (mall_id, offer_id, member_id, merged_from) DO NOTHING
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
            WHERE mall_id = $1 AND offer_id = $2 AND member_id = $3 AND merged_from = ''""",
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
    """The member's active cards that apply at the store, locked, oldest first (a merged
    member's are its survivor's: callers pass the survivor, ``merges.hold_members``)."""
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


async def lock_card(conn: Connection, mall_id: str, card_id: str) -> CardRow | None:
    row = await conn.fetchrow(
        "SELECT * FROM commitment_cards WHERE mall_id = $1 AND card_id = $2 FOR UPDATE",
        mall_id,
        uuid.UUID(card_id),
    )
    return None if row is None else _card(row)


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
