"""SQL for tier ladders and members' tier state. Every query is scoped by mall_id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from kit.db import Connection

from member.domain.benefits import DEFAULT_BENEFITS, Benefit
from member.domain.tiers import DEFAULT_TIERS, Tier, TierLadder


async def ladders(conn: Connection, mall_ids: Sequence[str]) -> dict[str, TierLadder]:
    """mall_id → its tiers; a mall without any gets the default ladder (seeded once)."""
    wanted = sorted(set(mall_ids))
    rows = await conn.fetch("SELECT * FROM tiers WHERE mall_id = ANY($1::text[])", wanted)
    if {r["mall_id"] for r in rows} != set(wanted):
        await conn.execute(
            """INSERT INTO tiers (mall_id, tier_code, name, rank, threshold_fen)
               SELECT m.mall_id, d.c, d.n, d.r, d.f FROM malls m,
                      unnest($2::text[], $3::text[], $4::int[], $5::bigint[]) AS d(c, n, r, f)
                WHERE m.mall_id = ANY($1::text[])
                  AND NOT EXISTS (SELECT 1 FROM tiers t WHERE t.mall_id = m.mall_id)
               ON CONFLICT DO NOTHING""",
            wanted,
            [t.tier_code for t in DEFAULT_TIERS],
            [t.name for t in DEFAULT_TIERS],
            [t.rank for t in DEFAULT_TIERS],
            [t.threshold_fen for t in DEFAULT_TIERS],
        )
        defaults = [(c, b) for c, bs in DEFAULT_BENEFITS.items() for b in bs]
        await conn.execute(
            """INSERT INTO tier_benefits (mall_id, tier_code, benefit_code, title, description)
               SELECT t.mall_id, t.tier_code, d.b, d.t, d.d
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS d(c, b, t, d)
                 JOIN tiers t ON t.tier_code = d.c
                WHERE t.mall_id = ANY($1::text[])
                  AND NOT EXISTS (SELECT 1 FROM tier_benefits x WHERE x.mall_id = t.mall_id)
               ON CONFLICT DO NOTHING""",
            wanted,
            [c for c, _ in defaults],
            [b.benefit_code for _, b in defaults],
            [b.title for _, b in defaults],
            [b.description for _, b in defaults],
        )
        rows = await conn.fetch("SELECT * FROM tiers WHERE mall_id = ANY($1::text[])", wanted)
    by_mall: dict[str, list[Tier]] = {}
    for r in rows:
        by_mall.setdefault(r["mall_id"], []).append(
            Tier(r["tier_code"], r["name"], r["rank"], r["threshold_fen"])
        )
    return {m: TierLadder(tiers) for m, tiers in by_mall.items()}


async def lock_members(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """(mall_id, member_id) → current tier, the rows locked against concurrent tier changes
    (NO KEY UPDATE: payments referencing the member can still be inserted), in key order."""
    ordered = sorted(set(keys))
    rows = await conn.fetch(
        """SELECT m.mall_id, m.member_id, m.tier_code
             FROM members m JOIN unnest($1::text[], $2::uuid[]) AS t(k, u)
               ON m.mall_id = t.k AND m.member_id = t.u
            ORDER BY m.mall_id, m.member_id
              FOR NO KEY UPDATE OF m""",
        [k[0] for k in ordered],
        [uuid.UUID(k[1]) for k in ordered],
    )
    return {(r["mall_id"], str(r["member_id"])): r["tier_code"] for r in rows}


async def spends(
    conn: Connection, keys: Sequence[tuple[str, str]], since: datetime
) -> dict[tuple[str, str], int]:
    """(mall_id, member_id) → fen paid after ``since``, less what refunds took back."""
    ordered = sorted(set(keys))
    rows = await conn.fetch(
        """SELECT t.k AS mall_id, t.u AS member_id,
                  coalesce(sum(p.amount_fen - coalesce(
                      (SELECT sum(r.refund_amount_fen) FROM refunds r
                        WHERE r.mall_id = p.mall_id AND r.transaction_id = p.transaction_id
                          AND r.state = 'attributed'), 0)), 0)::bigint AS spend
             FROM unnest($1::text[], $2::uuid[]) AS t(k, u)
             LEFT JOIN payments p
               ON p.mall_id = t.k AND p.member_id = t.u AND p.paid_at > $3
            GROUP BY t.k, t.u""",
        [k[0] for k in ordered],
        [uuid.UUID(k[1]) for k in ordered],
        since,
    )
    return {(r["mall_id"], str(r["member_id"])): r["spend"] for r in rows}


async def set_tier(
    conn: Connection, mall_id: str, member_id: str, tier_code: str, review_at: datetime | None
) -> None:
    await conn.execute(
        """UPDATE members SET tier_code = $3, tier_review_at = $4
            WHERE mall_id = $1 AND member_id = $2""",
        mall_id,
        uuid.UUID(member_id),
        tier_code,
        review_at,
    )


async def due_for_review(conn: Connection, mall_id: str, now: datetime) -> dict[str, str]:
    """member_id → tier of members whose review date has come, locked; a concurrent review
    waits, then finds them no longer due."""
    rows = await conn.fetch(
        """SELECT member_id, tier_code FROM members
            WHERE mall_id = $1 AND tier_review_at <= $2
            ORDER BY member_id
              FOR NO KEY UPDATE""",
        mall_id,
        now,
    )
    return {str(r["member_id"]): r["tier_code"] for r in rows}


async def benefits(conn: Connection, mall_id: str) -> dict[str, tuple[Benefit, ...]]:
    """tier_code → what the tier gives, in benefit_code order."""
    rows = await conn.fetch(
        """SELECT tier_code, benefit_code, title, description FROM tier_benefits
            WHERE mall_id = $1 ORDER BY tier_code, benefit_code""",
        mall_id,
    )
    out: dict[str, list[Benefit]] = {}
    for r in rows:
        out.setdefault(r["tier_code"], []).append(
            Benefit(r["benefit_code"], r["title"], r["description"])
        )
    return {code: tuple(lines) for code, lines in out.items()}


async def replace_benefits(
    conn: Connection, mall_id: str, tier_code: str, lines: Sequence[Benefit]
) -> bool:
    """The tier's benefits become exactly ``lines``; False if the mall has no such tier."""
    if not await conn.fetchval(
        "SELECT true FROM tiers WHERE mall_id = $1 AND tier_code = $2 FOR UPDATE",
        mall_id,
        tier_code,
    ):
        return False
    await conn.execute(
        "DELETE FROM tier_benefits WHERE mall_id = $1 AND tier_code = $2", mall_id, tier_code
    )
    await conn.execute(
        """INSERT INTO tier_benefits (mall_id, tier_code, benefit_code, title, description)
           SELECT $1, $2, b, t, d FROM unnest($3::text[], $4::text[], $5::text[]) AS x(b, t, d)""",
        mall_id,
        tier_code,
        [b.benefit_code for b in lines],
        [b.title for b in lines],
        [b.description for b in lines],
    )
    return True
