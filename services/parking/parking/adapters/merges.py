"""SQL that moves what parking keeps for a member absorbed by a merge onto the survivor."""

from __future__ import annotations

from collections.abc import Iterable

from kit.db import Connection


async def lock_members(conn: Connection, members: Iterable[tuple[str, str]]) -> None:
    """Serialise facts about a member with a merge of that member (transaction-scoped locks,
    taken in one order): a payment handled at the same moment as the merge either commits
    first and is moved, or waits and sees the merge."""
    keys = sorted({f"member:{mall_id}:{member_id}" for mall_id, member_id in members})
    if keys:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(k)) FROM unnest($1::text[]) AS k ORDER BY k",
            keys,
        )


async def move_member(conn: Connection, mall_id: str, merged: str, survivor: str) -> int:
    """Plates (audited), open sessions, payments, refunds and unused coupons move; the tier is
    the survivor's (member announces it). Returns how many plates moved."""
    await lock_members(conn, [(mall_id, merged)])
    await conn.execute(
        """INSERT INTO member_merges (mall_id, merged_member_id, survivor_member_id)
           VALUES ($1, $2, $3) ON CONFLICT DO NOTHING""",
        mall_id,
        merged,
        survivor,
    )
    moved = await conn.fetch(
        """UPDATE plates SET member_id = $3 WHERE mall_id = $1 AND member_id = $2
           RETURNING plate_number""",
        mall_id,
        merged,
        survivor,
    )
    await conn.executemany(
        """INSERT INTO plate_audit (mall_id, plate_number, member_id, action, holder_member_id)
           VALUES ($1, $2, $3, 'moved', $4)""",
        [(mall_id, r["plate_number"], survivor, merged) for r in moved],
    )
    for table, extra in (
        ("sessions", " AND status = 'open'"),
        ("member_payments", ""),
        ("member_refunds", ""),
        ("member_coupons", " AND used_session_id IS NULL"),
    ):
        await conn.execute(
            f"UPDATE {table} SET member_id = $3 WHERE mall_id = $1 AND member_id = $2{extra}",
            mall_id,
            merged,
            survivor,
        )
    await conn.execute(
        "DELETE FROM member_tiers WHERE mall_id = $1 AND member_id = $2", mall_id, merged
    )
    return len(moved)


#: A member id as it stands after merges: ``{member}`` (SQL), or its survivor.
SURVIVOR_SQL = """coalesce((SELECT survivor_member_id FROM member_merges
                             WHERE mall_id = {mall} AND merged_member_id = {member}), {member})"""
