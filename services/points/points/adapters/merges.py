"""SQL for following member merges: where an absorbed member's account, lots and holds go."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from kit.db import Connection

from points.adapters import repository


async def record_merge(
    conn: Connection, mall_id: str, merged: str, survivor: str, merge_request_id: str
) -> None:
    """Remember the merge (a repeat changes nothing); members merged into ``merged`` before
    now follow it to ``survivor``."""
    await conn.execute(
        """INSERT INTO member_merges (mall_id, merged_member_id, survivor_member_id,
                                      merge_request_id)
           VALUES ($1, $2, $3, $4) ON CONFLICT (mall_id, merged_member_id) DO NOTHING""",
        mall_id,
        uuid.UUID(merged),
        uuid.UUID(survivor),
        merge_request_id,
    )
    await conn.execute(
        """UPDATE member_merges SET survivor_member_id = $3
            WHERE mall_id = $1 AND survivor_member_id = $2""",
        mall_id,
        uuid.UUID(merged),
        uuid.UUID(survivor),
    )


async def survivors(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """(mall_id, member_id) → survivor, for the members among ``keys`` that were merged."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT g.mall_id, g.merged_member_id, g.survivor_member_id
             FROM unnest($1::text[], $2::uuid[]) AS t(m, u)
             JOIN member_merges g ON g.mall_id = t.m AND g.merged_member_id = t.u""",
        [k[0] for k in keys],
        [uuid.UUID(k[1]) for k in keys],
    )
    return {(r["mall_id"], str(r["merged_member_id"])): str(r["survivor_member_id"]) for r in rows}


async def move_account(
    conn: Connection, mall_id: str, merged: str, survivor: str, reference: str
) -> int:
    """Move what the merged member's account holds to the survivor's: the balance (as a pair
    of 'adjustment' entries, so the ledger of each still adds up and the mall's total is
    unchanged), debt, lifetime earnings, open lots and open holds. Both accounts are locked
    (in key order) and read after the lock, so credits that committed first move too.
    Returns the points moved (0 when there was nothing left to move)."""
    balances = await repository.lock_accounts(conn, [(mall_id, merged), (mall_id, survivor)])
    moving = balances[(mall_id, merged)]
    m, s = uuid.UUID(merged), uuid.UUID(survivor)
    if moving:
        await conn.execute(
            """INSERT INTO ledger (mall_id, member_id, kind, points, balance_after, reference,
                                   description)
               VALUES ($1, $2, 'adjustment', $4, 0, $6, $7),
                      ($1, $3, 'adjustment', -$4, $5, $6, $8)""",
            mall_id,
            m,
            s,
            -moving,
            balances[(mall_id, survivor)] + moving,
            reference,
            f"merged into {survivor}",
            f"merged from {merged}",
        )
    await conn.execute(
        """WITH gone AS (
               SELECT balance, lifetime_earned, debt FROM accounts
                WHERE mall_id = $1 AND member_id = $2),
           cleared AS (
               UPDATE accounts SET balance = 0, lifetime_earned = 0, debt = 0, updated_at = now()
                WHERE mall_id = $1 AND member_id = $2)
           UPDATE accounts a SET balance = a.balance + g.balance,
                                 lifetime_earned = a.lifetime_earned + g.lifetime_earned,
                                 debt = a.debt + g.debt, updated_at = now()
             FROM gone g WHERE a.mall_id = $1 AND a.member_id = $3""",
        mall_id,
        m,
        s,
    )
    await conn.execute(
        """UPDATE lots SET member_id = $3
            WHERE mall_id = $1 AND member_id = $2 AND points_remaining > 0""",
        mall_id,
        m,
        s,
    )
    await conn.execute(
        "UPDATE holds SET member_id = $3 WHERE mall_id = $1 AND member_id = $2 AND state = 'HELD'",
        mall_id,
        m,
        s,
    )
    if moving:
        await conn.execute(
            """UPDATE member_merges SET moved_points = moved_points + $3
                WHERE mall_id = $1 AND merged_member_id = $2""",
            mall_id,
            m,
            moving,
        )
    return moving
