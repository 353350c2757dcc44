"""SQL for following member merges: who an absorbed member's survivor is, the locks that
order claims against a merge, and moving coupons, limit counters and claim keys (what each
means: ``service_layer.merges``; commitment cards move in ``commitment_merges``, the card
package mirror's rows in ``card_package_merges``).

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
