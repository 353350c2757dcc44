"""SQL for what the API shows of members (tier, tags, phone) and for tags and phones."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
from kit.db import Connection

from member.domain.tags import MemberProfile

_PROFILE = """
SELECT m.mall_id, m.member_id, m.tier_code, m.status, m.join_channel, m.joined_at,
       coalesce(m.merged_into::text, '') AS merged_into,
       coalesce((SELECT i.value FROM identities i
                  WHERE i.mall_id = m.mall_id AND i.member_id = m.member_id AND i.kind = 'phone'
                  ORDER BY i.created_at DESC LIMIT 1), '') AS phone,
       array(SELECT g.tag FROM member_tags g
              WHERE g.mall_id = m.mall_id AND g.member_id = m.member_id ORDER BY g.tag) AS tags
  FROM members m
"""


def _profile(r: asyncpg.Record) -> MemberProfile:
    return MemberProfile(
        mall_id=r["mall_id"],
        member_id=str(r["member_id"]),
        tier_code=r["tier_code"],
        status=r["status"],
        join_channel=r["join_channel"],
        joined_at=r["joined_at"],
        phone=r["phone"],
        tags=tuple(r["tags"]),
        merged_into=r["merged_into"],
    )


async def profile(conn: Connection, mall_id: str, member_id: str) -> MemberProfile | None:
    try:
        key = uuid.UUID(member_id)
    except ValueError:
        return None
    row = await conn.fetchrow(_PROFILE + " WHERE m.mall_id = $1 AND m.member_id = $2", mall_id, key)
    return _profile(row) if row else None


async def list_profiles(
    conn: Connection,
    mall_id: str,
    *,
    after: uuid.UUID | None,
    limit: int,
    tier_code: str,
    tag: str,
) -> list[MemberProfile]:
    """One page of a mall's members in member_id order, after the cursor, filtered."""
    rows = await conn.fetch(
        _PROFILE
        + """ WHERE m.mall_id = $1
                AND ($2::uuid IS NULL OR m.member_id > $2)
                AND ($3 = '' OR m.tier_code = $3)
                AND ($4 = '' OR EXISTS (SELECT 1 FROM member_tags g WHERE g.mall_id = m.mall_id
                                          AND g.member_id = m.member_id AND g.tag = $4))
              ORDER BY m.member_id LIMIT $5""",
        mall_id,
        after,
        tier_code,
        tag,
        limit,
    )
    return [_profile(r) for r in rows]


async def lock_member(conn: Connection, mall_id: str, member_id: str) -> bool:
    """Lock the member row (NO KEY UPDATE) so concurrent tag writes apply one after the other."""
    try:
        key = uuid.UUID(member_id)
    except ValueError:
        return False
    return bool(
        await conn.fetchval(
            """SELECT true FROM members WHERE mall_id = $1 AND member_id = $2
                  FOR NO KEY UPDATE""",
            mall_id,
            key,
        )
    )


async def replace_manual_tags(
    conn: Connection, mall_id: str, member_id: str, tags: Sequence[str]
) -> None:
    key = uuid.UUID(member_id)
    await conn.execute(
        "DELETE FROM member_tags WHERE mall_id = $1 AND member_id = $2 AND source = 'manual'",
        mall_id,
        key,
    )
    await conn.execute(
        """INSERT INTO member_tags (mall_id, member_id, tag, source)
           SELECT $1, $2, t, 'manual' FROM unnest($3::text[]) AS t
           ON CONFLICT DO NOTHING""",
        mall_id,
        key,
        list(tags),
    )


async def link_identity(
    conn: Connection, mall_id: str, kind: str, value: str, member_id: str
) -> str:
    """Give the identity to the member unless someone holds it; the member holding it now."""
    await conn.execute(
        """INSERT INTO identities (mall_id, kind, value, member_id) VALUES ($1, $2, $3, $4)
           ON CONFLICT (mall_id, kind, value) DO NOTHING""",
        mall_id,
        kind,
        value,
        uuid.UUID(member_id),
    )
    holder = await conn.fetchval(
        "SELECT member_id FROM identities WHERE mall_id = $1 AND kind = $2 AND value = $3",
        mall_id,
        kind,
        value,
    )
    return str(holder)
