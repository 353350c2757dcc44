"""SQL for shopping guides and the members bound to them. Every query is scoped by mall_id."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from kit.db import Connection

from member.domain.guides import Guide, GuideMember


def _guide(r: asyncpg.Record) -> Guide:
    return Guide(r["mall_id"], r["guide_id"], r["tenant_id"], r["store_id"], r["name"])


async def upsert_guide(conn: Connection, guide: Guide) -> Guide:
    """Create the guide, or update its store and name if the same tenant has it; the row as
    stored (another tenant's guide of that id comes back unchanged)."""
    row = await conn.fetchrow(
        """INSERT INTO guides (mall_id, guide_id, tenant_id, store_id, name)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (mall_id, guide_id) DO UPDATE SET store_id = $4, name = $5
            WHERE guides.tenant_id = $3
           RETURNING mall_id, guide_id, tenant_id, store_id, name""",
        guide.mall_id,
        guide.guide_id,
        guide.tenant_id,
        guide.store_id,
        guide.name,
    )
    if row is not None:
        return _guide(row)
    taken = await get_guide(conn, guide.mall_id, guide.guide_id)
    assert taken is not None, "the conflicting row"
    return taken


async def get_guide(conn: Connection, mall_id: str, guide_id: str) -> Guide | None:
    row = await conn.fetchrow(
        """SELECT mall_id, guide_id, tenant_id, store_id, name FROM guides
            WHERE mall_id = $1 AND guide_id = $2""",
        mall_id,
        guide_id,
    )
    return _guide(row) if row else None


async def paid_at_store(conn: Connection, mall_id: str, member_id: str, store_id: str) -> bool:
    return bool(
        await conn.fetchval(
            """SELECT true FROM payments
                WHERE mall_id = $1 AND member_id = $2 AND store_id = $3 LIMIT 1""",
            mall_id,
            uuid.UUID(member_id),
            store_id,
        )
    )


async def bind(
    conn: Connection, mall_id: str, member_id: str, guide: Guide
) -> tuple[datetime, str | None]:
    """Bind the member to the guide (one guide per tenant); (bound_at, the tenant's guide
    before: None if there was none, the same guide id if nothing changed). The caller holds
    the member's lock."""
    key = uuid.UUID(member_id)
    before = await conn.fetchrow(
        """SELECT guide_id, bound_at FROM guide_bindings
            WHERE mall_id = $1 AND member_id = $2 AND tenant_id = $3""",
        mall_id,
        key,
        guide.tenant_id,
    )
    if before is not None and before["guide_id"] == guide.guide_id:
        return before["bound_at"], guide.guide_id
    bound_at: datetime = await conn.fetchval(
        """INSERT INTO guide_bindings (mall_id, member_id, tenant_id, guide_id)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (mall_id, member_id, tenant_id)
           DO UPDATE SET guide_id = $4, bound_at = now()
           RETURNING bound_at""",
        mall_id,
        key,
        guide.tenant_id,
        guide.guide_id,
    )
    return bound_at, before["guide_id"] if before else None


async def guide_members(
    conn: Connection,
    mall_id: str,
    guide_id: str,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[GuideMember]:
    """Members bound to the guide in binding order, after the cursor."""
    rows = await conn.fetch(
        """SELECT b.member_id, b.bound_at, m.tier_code,
                  coalesce((SELECT i.value FROM identities i
                             WHERE i.mall_id = b.mall_id AND i.member_id = b.member_id
                               AND i.kind = 'phone'
                             ORDER BY i.created_at DESC LIMIT 1), '') AS phone
             FROM guide_bindings b
             JOIN members m ON m.mall_id = b.mall_id AND m.member_id = b.member_id
            WHERE b.mall_id = $1 AND b.guide_id = $2
              AND ($3::timestamptz IS NULL OR (b.bound_at, b.member_id) > ($3, $4::uuid))
            ORDER BY b.bound_at, b.member_id
            LIMIT $5""",
        mall_id,
        guide_id,
        after[0] if after else None,
        uuid.UUID(after[1]) if after else None,
        limit,
    )
    return [
        GuideMember(str(r["member_id"]), r["tier_code"], r["phone"], r["bound_at"]) for r in rows
    ]


async def member_guides(
    conn: Connection, mall_id: str, member_id: str
) -> list[tuple[Guide, datetime]]:
    """The guides the member is bound to (one per tenant), most recently bound first."""
    rows = await conn.fetch(
        """SELECT g.mall_id, g.guide_id, g.tenant_id, g.store_id, g.name, b.bound_at
             FROM guide_bindings b
             JOIN guides g ON g.mall_id = b.mall_id AND g.guide_id = b.guide_id
            WHERE b.mall_id = $1 AND b.member_id = $2
            ORDER BY b.bound_at DESC, g.guide_id""",
        mall_id,
        uuid.UUID(member_id),
    )
    return [(_guide(r), r["bound_at"]) for r in rows]


async def store_guides(conn: Connection, mall_id: str, store_id: str) -> list[Guide]:
    rows = await conn.fetch(
        """SELECT mall_id, guide_id, tenant_id, store_id, name FROM guides
            WHERE mall_id = $1 AND store_id = $2 ORDER BY guide_id LIMIT 100""",
        mall_id,
        store_id,
    )
    return [_guide(r) for r in rows]
