"""SQL for tag rules and the tags they set (member_tags.source = 'rule')."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from kit.db import Connection

from member.domain.tag_rules import TagRule


async def put_rule(conn: Connection, mall_id: str, rule: TagRule) -> None:
    await conn.execute(
        """INSERT INTO tag_rules (mall_id, tag, tenant_category, window_days, min_spend_fen)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (mall_id, tag) DO UPDATE
              SET tenant_category = $3, window_days = $4, min_spend_fen = $5,
                  updated_at = now()""",
        mall_id,
        rule.tag,
        rule.tenant_category,
        rule.window_days,
        rule.min_spend_fen,
    )


async def rules(conn: Connection, mall_id: str) -> list[TagRule]:
    rows = await conn.fetch(
        """SELECT tag, tenant_category, window_days, min_spend_fen FROM tag_rules
            WHERE mall_id = $1 ORDER BY tag""",
        mall_id,
    )
    return [TagRule(**dict(r)) for r in rows]


async def delete_rule(conn: Connection, mall_id: str, tag: str) -> bool:
    return bool(
        await conn.fetchval(
            "DELETE FROM tag_rules WHERE mall_id = $1 AND tag = $2 RETURNING true", mall_id, tag
        )
    )


async def malls_with_rule_tags(conn: Connection) -> list[str]:
    """Malls that have rules, or tags left by rules (a deleted rule's tags are swept too)."""
    rows = await conn.fetch(
        """SELECT mall_id FROM tag_rules
           UNION SELECT DISTINCT mall_id FROM member_tags WHERE source = 'rule'
           ORDER BY 1"""
    )
    return [r["mall_id"] for r in rows]


_QUALIFIED = """
WITH r AS (SELECT tag, tenant_category, window_days, min_spend_fen
             FROM tag_rules WHERE mall_id = $1),
spend AS (
    SELECT r.tag, p.member_id,
           sum(p.amount_fen - coalesce((SELECT sum(f.refund_amount_fen) FROM refunds f
                                         WHERE f.mall_id = p.mall_id
                                           AND f.transaction_id = p.transaction_id
                                           AND f.state = 'attributed'), 0)) AS fen
      FROM r
      JOIN tenants t ON t.mall_id = $1 AND t.category = r.tenant_category
      JOIN payments p ON p.mall_id = $1 AND p.tenant_id = t.tenant_id
                     AND p.paid_at > $2::timestamptz - make_interval(days => r.window_days)
     WHERE ($3::uuid[] IS NULL OR p.member_id = ANY($3::uuid[]))
     GROUP BY r.tag, p.member_id),
qualified AS (
    SELECT s.tag, s.member_id FROM spend s JOIN r ON r.tag = s.tag
      JOIN members m ON m.mall_id = $1 AND m.member_id = s.member_id AND m.status = 'active'
     WHERE s.fen >= r.min_spend_fen)
"""


async def evaluate(
    conn: Connection, mall_id: str, now: datetime, members: Sequence[str] | None
) -> tuple[int, int]:
    """Make the mall's rule tags match its rules as of ``now``, for these members (None: all
    of them); (tags added, tags removed)."""
    scope = [uuid.UUID(m) for m in members] if members is not None else None
    removed = await conn.fetchval(
        _QUALIFIED
        + """, gone AS (
                 DELETE FROM member_tags g
                  WHERE g.mall_id = $1 AND g.source = 'rule'
                    AND ($3::uuid[] IS NULL OR g.member_id = ANY($3::uuid[]))
                    AND NOT EXISTS (SELECT 1 FROM qualified q
                                     WHERE q.tag = g.tag AND q.member_id = g.member_id)
                 RETURNING 1)
             SELECT count(*) FROM gone""",
        mall_id,
        now,
        scope,
    )
    added = await conn.fetchval(
        _QUALIFIED
        + """, put AS (
                 INSERT INTO member_tags (mall_id, member_id, tag, source)
                 SELECT $1, q.member_id, q.tag, 'rule' FROM qualified q
                  ORDER BY q.member_id, q.tag
                 ON CONFLICT DO NOTHING
                 RETURNING 1)
             SELECT count(*) FROM put""",
        mall_id,
        now,
        scope,
    )
    return int(added), int(removed)


async def tagged(conn: Connection, mall_id: str, tag: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM member_tags WHERE mall_id = $1 AND tag = $2", mall_id, tag
        )
    )


async def update_manual_tags(
    conn: Connection, mall_id: str, member_id: str, add: Sequence[str], remove: Sequence[str]
) -> int:
    """Apply the change; how many manual tags the member has now."""
    key = uuid.UUID(member_id)
    await conn.execute(
        """DELETE FROM member_tags WHERE mall_id = $1 AND member_id = $2
              AND source = 'manual' AND tag = ANY($3::text[])""",
        mall_id,
        key,
        list(remove),
    )
    await conn.execute(
        """INSERT INTO member_tags (mall_id, member_id, tag, source)
           SELECT $1, $2, t, 'manual' FROM unnest($3::text[]) AS t
           ON CONFLICT DO NOTHING""",
        mall_id,
        key,
        list(add),
    )
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM member_tags
                WHERE mall_id = $1 AND member_id = $2 AND source = 'manual'""",
            mall_id,
            key,
        )
    )


async def try_lock_mall(conn: Connection, mall_id: str) -> bool:
    """One evaluator per mall at a time (transaction-scoped advisory lock)."""
    return bool(
        await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtext('member-tag-rules'), hashtext($1))",
            mall_id,
        )
    )
