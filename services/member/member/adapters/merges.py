"""SQL for identity links and member merges. Every query is scoped by mall_id."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from kit.db import Connection

from member.domain.model import Member


@dataclass(frozen=True)
class MemberState:
    member_id: str
    tier_code: str
    status: str
    tier_review_at: datetime | None


@dataclass(frozen=True)
class MergeRecord:
    merge_request_id: str
    survivor_member_id: str
    merged_member_id: str
    merged_at: datetime


async def identity_holder(conn: Connection, mall_id: str, kind: str, value: str) -> str | None:
    holder = await conn.fetchval(
        "SELECT member_id FROM identities WHERE mall_id = $1 AND kind = $2 AND value = $3",
        mall_id,
        kind,
        value,
    )
    return str(holder) if holder else None


async def claim_identity(
    conn: Connection, mall_id: str, kind: str, value: str, member_id: str
) -> str:
    """Give the identity to the member unless someone holds it (waiting for a concurrent
    claim to settle); the member holding it now."""
    await conn.execute(
        """INSERT INTO identities (mall_id, kind, value, member_id) VALUES ($1, $2, $3, $4)
           ON CONFLICT (mall_id, kind, value) DO NOTHING""",
        mall_id,
        kind,
        value,
        uuid.UUID(member_id),
    )
    holder = await identity_holder(conn, mall_id, kind, value)
    assert holder is not None, "claimed above or held by another"
    return holder


async def lock_for_merge(
    conn: Connection, mall_id: str, member_ids: Sequence[str]
) -> dict[str, MemberState]:
    """The members' state, locked FOR UPDATE in id order: payments (which lock members
    FOR NO KEY UPDATE before recording) wait for the merge, then see where it left them."""
    rows = await conn.fetch(
        """SELECT member_id, tier_code, status, tier_review_at FROM members
            WHERE mall_id = $1 AND member_id = ANY($2::uuid[])
            ORDER BY member_id FOR UPDATE""",
        mall_id,
        [uuid.UUID(m) for m in member_ids],
    )
    return {
        str(r["member_id"]): MemberState(
            str(r["member_id"]), r["tier_code"], r["status"], r["tier_review_at"]
        )
        for r in rows
    }


async def find_merge(conn: Connection, mall_id: str, merge_request_id: str) -> MergeRecord | None:
    row = await conn.fetchrow(
        """SELECT merge_request_id, survivor_member_id, merged_member_id, merged_at
             FROM member_merges WHERE mall_id = $1 AND merge_request_id = $2""",
        mall_id,
        merge_request_id,
    )
    if row is None:
        return None
    return MergeRecord(
        row["merge_request_id"],
        str(row["survivor_member_id"]),
        str(row["merged_member_id"]),
        row["merged_at"],
    )


async def move_member_data(conn: Connection, mall_id: str, survivor: str, merged: str) -> int:
    """Identities, payments, unused checkout codes, tags, consents and guide bindings of
    ``merged`` go to ``survivor`` (what the survivor has already wins). Payments moved."""
    s, m = uuid.UUID(survivor), uuid.UUID(merged)
    await conn.execute(
        "UPDATE identities SET member_id = $2 WHERE mall_id = $1 AND member_id = $3", mall_id, s, m
    )
    moved = await conn.fetchval(
        """WITH moved AS (UPDATE payments SET member_id = $2
                           WHERE mall_id = $1 AND member_id = $3 RETURNING 1)
           SELECT count(*) FROM moved""",
        mall_id,
        s,
        m,
    )
    await conn.execute(
        """UPDATE checkout_codes SET member_id = $2
            WHERE mall_id = $1 AND member_id = $3 AND used_at IS NULL""",
        mall_id,
        s,
        m,
    )
    for table in ("member_tags", "consents", "guide_bindings"):  # fixed names, not input
        await conn.execute(
            f"""WITH gone AS (DELETE FROM {table} WHERE mall_id = $1 AND member_id = $3
                              RETURNING *)
                INSERT INTO {table}
                SELECT (jsonb_populate_record(NULL::{table},
                            to_jsonb(g) || jsonb_build_object('member_id', $2::uuid))).*
                  FROM gone g
                ON CONFLICT DO NOTHING""",
            mall_id,
            s,
            m,
        )
    return int(moved or 0)


async def mark_merged(
    conn: Connection, mall_id: str, survivor: str, merged: str, at: datetime
) -> None:
    """``merged`` becomes MERGED into ``survivor``, and so do members merged into it before."""
    await conn.execute(
        """UPDATE members SET status = 'merged', merged_into = $2, merged_at = $4,
                              tier_review_at = NULL
            WHERE mall_id = $1 AND (member_id = $3 OR merged_into = $3)""",
        mall_id,
        uuid.UUID(survivor),
        uuid.UUID(merged),
        at,
    )


async def record_merge(
    conn: Connection,
    *,
    mall_id: str,
    merge_request_id: str,
    survivor: MemberState,
    merged: MemberState,
    operator: str,
    reason: str,
    moved_payments: int,
    at: datetime,
) -> None:
    await conn.execute(
        """INSERT INTO member_merges (mall_id, merge_request_id, survivor_member_id,
                                      merged_member_id, operator, reason, survivor_tier,
                                      merged_tier, moved_payments, merged_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        mall_id,
        merge_request_id,
        uuid.UUID(survivor.member_id),
        uuid.UUID(merged.member_id),
        operator,
        reason,
        survivor.tier_code,
        merged.tier_code,
        moved_payments,
        at,
    )


async def follow_merges(
    conn: Connection, members: Mapping[tuple[str, str], Member]
) -> dict[tuple[str, str], Member]:
    """Lock the members a payment is about to be recorded for (FOR NO KEY UPDATE, in key
    order) and replace any merged one by its survivor, locked too. A merge in flight holds
    its members FOR UPDATE, so this waits for it and then sees the merged state: a payment
    never lands on a member that a committed merge absorbed."""
    keys = sorted({(m.mall_id, m.member_id) for m in members.values()})
    if not keys:
        return dict(members)
    rows = await conn.fetch(
        """SELECT m.mall_id, m.member_id, m.merged_into
             FROM members m JOIN unnest($1::text[], $2::uuid[]) AS t(k, u)
               ON m.mall_id = t.k AND m.member_id = t.u
            ORDER BY m.mall_id, m.member_id
              FOR NO KEY UPDATE OF m""",
        [k[0] for k in keys],
        [uuid.UUID(k[1]) for k in keys],
    )
    redirect = {
        (r["mall_id"], str(r["member_id"])): str(r["merged_into"])
        for r in rows
        if r["merged_into"] is not None
    }
    if not redirect:
        return dict(members)
    targets = sorted({(k[0], v) for k, v in redirect.items()})
    survivors = await conn.fetch(
        """SELECT m.mall_id, m.member_id, m.tier_code
             FROM members m JOIN unnest($1::text[], $2::uuid[]) AS t(k, u)
               ON m.mall_id = t.k AND m.member_id = t.u
            ORDER BY m.mall_id, m.member_id
              FOR NO KEY UPDATE OF m""",
        [k[0] for k in targets],
        [uuid.UUID(k[1]) for k in targets],
    )
    tiers = {(r["mall_id"], str(r["member_id"])): r["tier_code"] for r in survivors}
    out: dict[tuple[str, str], Member] = {}
    for key, member in members.items():
        to = redirect.get((member.mall_id, member.member_id))
        out[key] = (
            member
            if to is None
            else replace(member, member_id=to, tier_code=tiers[(member.mall_id, to)])
        )
    return out


async def audit(conn: Connection, mall_id: str, limit: int) -> list[dict[str, str]]:
    """The mall's merges, newest first: who asked, why, when, and what moved."""
    rows = await conn.fetch(
        """SELECT merge_request_id, survivor_member_id::text, merged_member_id::text, operator,
                  reason, survivor_tier, merged_tier, moved_payments::text, merged_at::text
             FROM member_merges WHERE mall_id = $1
            ORDER BY merged_at DESC, merge_request_id LIMIT $2""",
        mall_id,
        limit,
    )
    return [dict(r) for r in rows]
