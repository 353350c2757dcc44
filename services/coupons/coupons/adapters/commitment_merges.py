"""SQL for following member merges on commitment cards: fold the absorbed member's active card
of an offer into the survivor's, move its other cards and its clawbacks (what it means:
``service_layer.merges``; the lock order: ``service_layer.commitment_purchases``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from kit.db import Connection


@dataclass
class CardsMoved:
    moved: int = 0
    folded: int = 0
    #: The survivor's cards that the purchases folded into them fulfilled.
    fulfilled: list[str] = field(default_factory=list)


async def move_commitment_cards(
    conn: Connection, mall_id: str, merged: str, survivor: str
) -> CardsMoved:
    """Fold the merged member's active card of an offer into the survivor's active one, move
    its other cards (a clashing one marked ``merged_from``) and its clawbacks to the survivor
    (nothing on a repeat: the merged member holds no card any more)."""
    # commitment_cards.member_id is text: compare the ids as the cards spell them.
    merged, survivor = str(uuid.UUID(merged)), str(uuid.UUID(survivor))
    # Refunds name no member (the advisory locks do not hold them): they lock a payment's
    # purchases, by transaction in card order, then its cards. Lock the purchases of both
    # members' active cards first, in that order: a refund in flight finishes before the fold
    # reads them, one coming later waits and finds them where the fold put them.
    await conn.execute(
        """SELECT 1 FROM commitment_purchases
            WHERE mall_id = $1
              AND card_id IN (SELECT card_id FROM commitment_cards
                               WHERE mall_id = $1 AND member_id = ANY($2::text[])
                                 AND status = 'active')
            ORDER BY card_id, transaction_id FOR UPDATE""",
        mall_id,
        [merged, survivor],
    )
    # Both members' cards, locked in the order payments lock them (lock_active_cards).
    await conn.execute(
        """SELECT 1 FROM commitment_cards WHERE mall_id = $1 AND member_id = ANY($2::text[])
            ORDER BY accepted_at, card_id FOR UPDATE""",
        mall_id,
        [merged, survivor],
    )
    done = CardsMoved()
    pairs = await conn.fetch(
        """SELECT g.card_id AS gone, k.card_id AS kept
             FROM commitment_cards g
             JOIN commitment_cards k
               ON k.mall_id = g.mall_id AND k.offer_id = g.offer_id AND k.member_id = $3
              AND k.status = 'active'
            WHERE g.mall_id = $1 AND g.member_id = $2 AND g.status = 'active'
            ORDER BY g.card_id""",
        mall_id,
        merged,
        survivor,
    )
    for p in pairs:
        if await _fold_card(conn, mall_id, p["gone"], p["kept"]):
            done.fulfilled.append(str(p["kept"]))
    done.folded = len(pairs)
    status = await conn.execute(
        """UPDATE commitment_cards c
              SET member_id = $3,
                  merged_from = CASE WHEN c.merged_from = '' AND EXISTS (
                                       SELECT 1 FROM commitment_cards s
                                        WHERE s.mall_id = $1 AND s.offer_id = c.offer_id
                                          AND s.member_id = $3 AND s.merged_from = '')
                                     THEN $2 ELSE c.merged_from END
            WHERE c.mall_id = $1 AND c.member_id = $2""",
        mall_id,
        merged,
        survivor,
    )
    done.moved = int(status.rsplit(" ", 1)[-1])
    await conn.execute(
        "UPDATE commitment_clawbacks SET member_id = $3 WHERE mall_id = $1 AND member_id = $2",
        mall_id,
        merged,
        survivor,
    )
    return done


async def _fold_card(conn: Connection, mall_id: str, gone: uuid.UUID, kept: uuid.UUID) -> bool:
    """Move an active card's purchases and applied discounts onto the other active card of
    its offer, add up their progress, span both windows; drop the emptied card. Whether the
    kept card is fulfilled by it."""
    # A payment counted on both cards counts once on the kept one (with the discount it got
    # there): the gone card's copy is dropped, and what it added there is not added again.
    dup = await conn.fetchrow(
        """WITH dropped AS (
             DELETE FROM commitment_purchases g
              WHERE g.mall_id = $1 AND g.card_id = $2
                AND EXISTS (SELECT 1 FROM commitment_purchases k
                             WHERE k.mall_id = $1 AND k.card_id = $3
                               AND k.transaction_id = g.transaction_id)
             RETURNING g.discount_fen, g.voided_at)
           SELECT count(*) AS n, COALESCE(sum(discount_fen), 0) AS fen
             FROM dropped WHERE voided_at IS NULL""",
        mall_id,
        gone,
        kept,
    )
    assert dup is not None
    # The rest move as they are (refunds, voids), updated rather than copied: the rows stay
    # the same rows, so anything that locked one follows it to the kept card.
    await conn.execute(
        "UPDATE commitment_purchases SET card_id = $3 WHERE mall_id = $1 AND card_id = $2",
        mall_id,
        gone,
        kept,
    )
    await conn.execute(
        "UPDATE commitment_applications SET card_id = $3 WHERE mall_id = $1 AND card_id = $2",
        mall_id,
        gone,
        kept,
    )
    fulfilled = await conn.fetchval(
        """UPDATE commitment_cards k
              SET purchases_made = k.purchases_made + g.purchases_made - $4,
                  discount_given_fen = k.discount_given_fen + g.discount_given_fen - $5,
                  accepted_at = LEAST(k.accepted_at, g.accepted_at),
                  deadline = GREATEST(k.deadline, g.deadline),
                  reminded_at = CASE WHEN g.deadline > k.deadline THEN g.reminded_at
                                     ELSE k.reminded_at END,
                  status = CASE WHEN k.purchases_made + g.purchases_made - $4
                                     >= k.purchases_required
                                THEN 'fulfilled' ELSE k.status END,
                  settled_at = CASE WHEN k.purchases_made + g.purchases_made - $4
                                         >= k.purchases_required
                                    THEN now() ELSE k.settled_at END
             FROM commitment_cards g
            WHERE k.mall_id = $1 AND k.card_id = $3 AND g.mall_id = $1 AND g.card_id = $2
           RETURNING k.status = 'fulfilled'""",
        mall_id,
        gone,
        kept,
        int(dup["n"]),
        int(dup["fen"]),
    )
    await conn.execute(
        "DELETE FROM commitment_cards WHERE mall_id = $1 AND card_id = $2", mall_id, gone
    )
    return bool(fulfilled)
