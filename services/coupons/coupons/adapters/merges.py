"""SQL for following member merges: who an absorbed member's survivor is, the locks that
order claims against a merge, and moving coupons, limit counters and claim keys, commitment
cards and the card package mirror's rows (what each means: ``service_layer.merges``).

Claims, payment counting and checkout discounts hold a SHARED transaction-scoped advisory lock
per member they name (they never wait on each other); a merge holds EXCLUSIVE ones on both
members. So a claim either commits before the merge moves the member (and is moved with the
rest) or, after the merge, sees it and is made for the survivor. Members share ``BUCKETS`` locks
(a flash-grab batch of 2,000 claimants takes at most that many, well inside PostgreSQL's lock
table); a merge briefly holds up the claims of the members hashed with its two, which is
harmless. Each side takes its advisory locks in one statement, in bucket order, before any row
lock, so neither waits on the other in a cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kit.db import Connection

#: Advisory lock namespace (first key) of these locks, and how many members' locks there are.
LOCK_SPACE = 0x436F7570  # "Coup"
BUCKETS = 256

_LOCK = """SELECT {fn}($2::int, b)
             FROM (SELECT DISTINCT hashtext(k) & ($3::int - 1) AS b
                     FROM unnest($1::text[]) AS k) AS buckets
            ORDER BY b"""


def _lock_keys(members: Iterable[tuple[str, str]]) -> list[str]:
    return sorted({f"{mall_id}:{member_id}" for mall_id, member_id in members})


#: _LOCK over the members and the survivors ``member_merges`` already names for them.
_LOCK_WITH_SURVIVORS = """SELECT pg_advisory_xact_lock_shared($2::int, b)
             FROM (SELECT DISTINCT hashtext(k) & ($3::int - 1) AS b
                     FROM (SELECT unnest($1::text[]) AS k
                           UNION ALL
                           SELECT g.mall_id || ':' || g.survivor_member_id::text
                             FROM unnest($4::text[], $5::uuid[]) AS t(m, u)
                             JOIN member_merges g
                               ON g.mall_id = t.m AND g.merged_member_id = t.u) AS keys
                  ) AS buckets
            ORDER BY b"""


async def hold_members(
    conn: Connection, members: Sequence[tuple[str, str]], *, survivors_too: bool = False
) -> dict[tuple[str, str], str]:
    """In a claim's (or a payment's, a checkout's) transaction: share-lock the members against
    merges; then the survivor of each member already merged (read after the lock, so a merge
    that committed while this waited is seen).

    ``survivors_too`` also share-locks those survivors, for callers that go on to use the
    survivor's rows under the merged member's lock (payments): the survivor may be being
    merged itself. Its locks are taken with the members' in one statement; only a survivor
    merged again between that statement's read and its locks takes a second one (out of
    bucket order: it can meet a merge in a deadlock, which PostgreSQL breaks and the caller
    retries)."""
    if not members:
        return {}
    if not survivors_too:
        await conn.execute(
            _LOCK.format(fn="pg_advisory_xact_lock_shared"),
            _lock_keys(members),
            LOCK_SPACE,
            BUCKETS,
        )
        return await survivors(conn, members)
    keys = _lock_keys(members)
    await conn.execute(
        _LOCK_WITH_SURVIVORS,
        keys,
        LOCK_SPACE,
        BUCKETS,
        [m[0] for m in members],
        [uuid.UUID(m[1]) for m in members],
    )
    held = set(keys)
    while True:
        found = await survivors(conn, members)
        more = [k for k in _lock_keys((m, s) for (m, _), s in found.items()) if k not in held]
        if not more:
            return found
        await conn.execute(
            _LOCK.format(fn="pg_advisory_xact_lock_shared"), more, LOCK_SPACE, BUCKETS
        )
        held.update(more)


async def lock_for_merge(conn: Connection, merges: Iterable[tuple[str, str, str]]) -> None:
    """In a merge batch's transaction: wait for the claims, payments and checkouts of its
    members (each merge's ``(mall_id, merged, survivor)``) in flight; hold new ones. All in
    one statement: one lock per merge would hold some while waiting for others."""
    await conn.execute(
        _LOCK.format(fn="pg_advisory_xact_lock"),
        _lock_keys(
            member
            for mall_id, merged, survivor in merges
            for member in ((mall_id, merged), (mall_id, survivor))
        ),
        LOCK_SPACE,
        BUCKETS,
    )


async def survivors(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """(mall_id, member_id) → survivor, for the members among ``keys`` that were merged."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT g.mall_id, g.merged_member_id::text AS merged,
                  g.survivor_member_id::text AS survivor
             FROM unnest($1::text[], $2::uuid[]) AS t(m, u)
             JOIN member_merges g ON g.mall_id = t.m AND g.merged_member_id = t.u""",
        [k[0] for k in keys],
        [uuid.UUID(k[1]) for k in keys],
    )
    return {(r["mall_id"], r["merged"]): r["survivor"] for r in rows}


async def record_merge(
    conn: Connection, mall_id: str, merged: str, survivor: str, merge_request_id: str
) -> None:
    """Remember the merge (a repeat changes nothing); members merged into ``merged`` before
    now follow it to ``survivor``."""
    await conn.execute(
        """INSERT INTO member_merges (mall_id, merged_member_id, survivor_member_id,
                                      merge_request_id)
           VALUES ($1, $2::uuid, $3::uuid, $4)
           ON CONFLICT (mall_id, merged_member_id) DO NOTHING""",
        mall_id,
        merged,
        survivor,
        merge_request_id,
    )
    await conn.execute(
        """UPDATE member_merges SET survivor_member_id = $3::uuid
            WHERE mall_id = $1 AND survivor_member_id = $2::uuid""",
        mall_id,
        merged,
        survivor,
    )


async def move_member(conn: Connection, mall_id: str, merged: str, survivor: str) -> int:
    """Move the merged member's coupons (every state: the history goes too), claim keys and
    per-member (and per-member-per-day) limit counters to the survivor; the number of coupons
    moved (0 on a repeat).

    A claim key (request id) the survivor also used is kept apart as ``<request id>@<merged
    member>``; the survivor's counters become the sum of both, so a per-member limit counts
    what both held."""
    await conn.execute(
        """UPDATE coupons c SET request_id = c.request_id || '@' || $2
            WHERE c.mall_id = $1 AND c.member_id = $2::uuid
              AND EXISTS (SELECT 1 FROM coupons s
                           WHERE s.mall_id = $1 AND s.member_id = $3::uuid
                             AND s.request_id = c.request_id)""",
        mall_id,
        merged,
        survivor,
    )
    status = await conn.execute(
        """UPDATE coupons SET member_id = $3::uuid WHERE mall_id = $1 AND member_id = $2::uuid""",
        mall_id,
        merged,
        survivor,
    )
    await conn.execute(
        """INSERT INTO member_claims AS mc (mall_id, stock_id, member_id, claimed)
           SELECT mall_id, stock_id, $3::uuid, claimed FROM member_claims
            WHERE mall_id = $1 AND member_id = $2::uuid AND claimed > 0
            ORDER BY stock_id
           ON CONFLICT (mall_id, stock_id, member_id)
           DO UPDATE SET claimed = mc.claimed + excluded.claimed""",
        mall_id,
        merged,
        survivor,
    )
    await conn.execute(
        "DELETE FROM member_claims WHERE mall_id = $1 AND member_id = $2::uuid",
        mall_id,
        merged,
    )
    await conn.execute(
        """INSERT INTO member_days AS md (mall_id, stock_id, member_id, day, claimed)
           SELECT mall_id, stock_id, $3::uuid, day, claimed FROM member_days
            WHERE mall_id = $1 AND member_id = $2::uuid AND claimed > 0
            ORDER BY stock_id, day
           ON CONFLICT (mall_id, stock_id, member_id, day)
           DO UPDATE SET claimed = md.claimed + excluded.claimed""",
        mall_id,
        merged,
        survivor,
    )
    await conn.execute(
        "DELETE FROM member_days WHERE mall_id = $1 AND member_id = $2::uuid", mall_id, merged
    )
    return int(status.rsplit(" ", 1)[-1])


# -- commitment cards -----------------------------------------------------------------------


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


# -- the card package mirror ----------------------------------------------------------------


async def move_card_package(conn: Connection, mall_id: str, merged: str, survivor: str) -> int:
    """Move the merged member's mirrored coupons to the survivor, each the platform may hold
    already pinned to the WeChat identity it went to; the survivor takes the merged member's
    identity when it has none. The number of coupons moved (0 on a repeat)."""
    merged, survivor = str(uuid.UUID(merged)), str(uuid.UUID(survivor))
    # Coupons sent (or tried: the answer may have been lost) before pinning existed.
    await conn.execute(
        """UPDATE card_package_coupons c SET appid = p.appid, openid = p.openid
             FROM card_package_payers p
            WHERE c.mall_id = $1 AND c.member_id = $2 AND c.openid = ''
              AND (c.platform <> 'none' OR c.attempts > 0)
              AND p.mall_id = $1 AND p.member_id = $2""",
        mall_id,
        merged,
    )
    # The merged member's identity stays too: a coupon event still naming it (its stream
    # lags the merge's) is mirrored to that identity rather than waiting for one forever.
    await conn.execute(
        """INSERT INTO card_package_payers (mall_id, member_id, appid, openid, updated_at)
           SELECT mall_id, $3, appid, openid, updated_at FROM card_package_payers
            WHERE mall_id = $1 AND member_id = $2
           ON CONFLICT (mall_id, member_id) DO NOTHING""",
        mall_id,
        merged,
        survivor,
    )
    status = await conn.execute(
        "UPDATE card_package_coupons SET member_id = $3 WHERE mall_id = $1 AND member_id = $2",
        mall_id,
        merged,
        survivor,
    )
    return int(status.rsplit(" ", 1)[-1])
