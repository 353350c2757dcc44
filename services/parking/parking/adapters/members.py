"""SQL for what parking learns about members from member's events: tier and spend."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kit.db import Connection

from parking.adapters.merges import SURVIVOR_SQL, lock_members


async def set_tiers(conn: Connection, changes: Sequence[tuple[str, str, str, datetime]]) -> None:
    """(mall_id, member_id, tier_code, as_of): a later fact wins; an older one is ignored."""
    latest: dict[tuple[str, str], tuple[str, str, str, datetime]] = {}
    for change in changes:  # one row per member: a statement cannot update a row twice
        known = latest.get(change[:2])
        if known is None or known[3] <= change[3]:
            latest[change[:2]] = change
    changes = list(latest.values())
    if not changes:
        return
    await conn.execute(
        """INSERT INTO member_tiers (mall_id, member_id, tier_code, as_of)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                    AS u(m, who, code, at)
            WHERE NOT EXISTS (SELECT 1 FROM member_merges
                               WHERE mall_id = u.m AND merged_member_id = u.who)
           ON CONFLICT (mall_id, member_id) DO UPDATE
               SET tier_code = excluded.tier_code, as_of = excluded.as_of
             WHERE member_tiers.as_of <= excluded.as_of""",
        [c[0] for c in changes],
        [c[1] for c in changes],
        [c[2] for c in changes],
        [c[3] for c in changes],
    )


async def add_payments(
    conn: Connection, payments: Sequence[tuple[str, str, str, int, datetime]]
) -> None:
    """(mall_id, transaction_id, member_id, amount_fen, paid_at); a payment counts once, on
    the survivor when its member was merged."""
    if not payments:
        return
    await lock_members(conn, [(p[0], p[2]) for p in payments])
    await conn.execute(
        """INSERT INTO member_payments (mall_id, transaction_id, member_id, amount_fen, paid_at)
           SELECT m, t, """
        + SURVIVOR_SQL.format(mall="u.m", member="u.who")
        + """, a, p
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[])
                  AS u(m, t, who, a, p)
           ON CONFLICT (mall_id, transaction_id) DO NOTHING""",
        [p[0] for p in payments],
        [p[1] for p in payments],
        [p[2] for p in payments],
        [p[3] for p in payments],
        [p[4] for p in payments],
    )


async def add_refunds(conn: Connection, refunds: Sequence[tuple[str, str, str, str, int]]) -> None:
    """(mall_id, refund_id, transaction_id, member_id, amount_fen); a refund counts once."""
    if not refunds:
        return
    await lock_members(conn, [(r[0], r[3]) for r in refunds])
    await conn.execute(
        """INSERT INTO member_refunds (mall_id, refund_id, transaction_id, member_id, amount_fen)
           SELECT m, r, t, """
        + SURVIVOR_SQL.format(mall="u.m", member="u.who")
        + """, a
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                  AS u(m, r, t, who, a)
           ON CONFLICT (mall_id, refund_id) DO NOTHING""",
        [r[0] for r in refunds],
        [r[1] for r in refunds],
        [r[2] for r in refunds],
        [r[3] for r in refunds],
        [r[4] for r in refunds],
    )


@dataclass(frozen=True)
class MemberFacts:
    """What a quote needs to know about a member: tier, net spend, usable parking coupons
    as (coupon_id, minutes), soonest to expire first."""

    tier_code: str = ""
    spend_fen: int = 0
    coupons: tuple[tuple[str, int], ...] = ()


#: The member-facts columns of a quote's query: $1 is the mall; the member, the start of the
#: spend window and the exit (spend up to it, coupons usable at it) are SQL filled in.
FACTS_SQL = """
    (SELECT tier_code FROM member_tiers t
      WHERE t.mall_id = $1 AND t.member_id = {member}) AS _tier,
    (SELECT coalesce(sum(greatest(p.amount_fen - coalesce(
                (SELECT sum(r.amount_fen) FROM member_refunds r
                  WHERE r.mall_id = p.mall_id AND r.transaction_id = p.transaction_id), 0), 0)), 0)
       FROM member_payments p
      WHERE p.mall_id = $1 AND p.member_id = {member}
        AND p.paid_at >= {since} AND p.paid_at <= {until}) AS _spent,
    (SELECT coalesce(json_agg(json_build_array(c.coupon_id, c.minutes)
                              ORDER BY c.valid_until NULLS LAST, c.coupon_id), '[]')
       FROM member_coupons c
      WHERE c.mall_id = $1 AND c.member_id = {member} AND c.used_session_id IS NULL
        AND NOT c.revoked AND c.minutes > 0
        AND (c.valid_from IS NULL OR c.valid_from <= {until})
        AND (c.valid_until IS NULL OR c.valid_until > {until})) AS _coupons"""


def facts_from(row: Any) -> MemberFacts:
    coupons = tuple((str(c[0]), int(c[1])) for c in json.loads(row["_coupons"] or "[]"))
    return MemberFacts(str(row["_tier"] or ""), int(row["_spent"] or 0), coupons)


async def facts(
    conn: Connection, mall_id: str, member_id: str, since: datetime, until: datetime
) -> MemberFacts:
    """A member's facts for a quote, in one round trip."""
    row = await conn.fetchrow(
        "SELECT " + FACTS_SQL.format(member="$2", since="$3", until="$4"),
        mall_id,
        member_id,
        since,
        until,
    )
    assert row is not None
    return facts_from(row)


_NET = """greatest({p}.amount_fen - coalesce(
            (SELECT sum(r.amount_fen) FROM member_refunds r
              WHERE r.mall_id = {p}.mall_id AND r.transaction_id = {p}.transaction_id), 0), 0)"""


@dataclass(frozen=True)
class PaymentSpend:
    """One payment in its day: when, the day's net spend before it, and its own net amount."""

    paid_at: datetime
    spend_before_fen: int
    amount_fen: int


async def payment_spend(
    conn: Connection, mall_id: str, member_id: str, transaction_id: str, *, time_zone: str
) -> PaymentSpend | None:
    """The payment of the member (refunds taken off) with the net spend of its day (mall time
    zone) before it; None when parking does not know that payment of that member."""
    row = await conn.fetchrow(
        f"""SELECT p.paid_at, {_NET.format(p="p")} AS own,
                   (SELECT coalesce(sum({_NET.format(p="q")}), 0)
                      FROM member_payments q
                     WHERE q.mall_id = p.mall_id AND q.member_id = p.member_id
                       AND q.paid_at >= (date_trunc('day', p.paid_at AT TIME ZONE $4)
                                         AT TIME ZONE $4)
                       AND (q.paid_at, q.transaction_id) < (p.paid_at, p.transaction_id)
                   ) AS before
              FROM member_payments p
             WHERE p.mall_id = $1 AND p.transaction_id = $2 AND p.member_id = $3""",
        mall_id,
        transaction_id,
        member_id,
        time_zone,
    )
    if row is None:
        return None
    return PaymentSpend(row["paid_at"], int(row["before"]), int(row["own"]))
