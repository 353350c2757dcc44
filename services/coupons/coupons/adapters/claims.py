"""The SQL of claiming: earlier claims by key, the member, member-day and daily counters, the
stock's counter, and the coupons themselves — each a single statement for a whole batch.

Locks are always taken in one order (member counters, then member-day counters, then day
counters, then stocks, each sorted by key), so concurrent batches never deadlock each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from kit.db import Connection

from coupons.adapters.stocks import terms_of
from coupons.domain.claims import Claim
from coupons.domain.coupons import Coupon

_COUPON = """c.mall_id, c.coupon_id, c.stock_id, c.tenant_id, c.member_id::text AS member_id,
    c.status, c.channel, c.guide_id, c.transaction_id, c.claimed_at, c.valid_from,
    c.valid_until, c.redeemed_at, c.redeemed_store_id, c.redeemed_car_park_id,
    c.request_id, s.title, s.description,
    s.kind, s.discount_fen, s.threshold_fen, s.percent_off, s.max_discount_fen,
    s.parking_minutes, s.store_ids, s.tenant_ids"""
COUPON_FROM = f"""SELECT {_COUPON} FROM coupons c
    JOIN stocks s ON s.mall_id = c.mall_id AND s.stock_id = c.stock_id"""


def coupon_of(row: Any) -> Coupon:
    return Coupon(
        mall_id=row["mall_id"],
        coupon_id=row["coupon_id"],
        stock_id=row["stock_id"],
        tenant_id=row["tenant_id"],
        member_id=row["member_id"],
        status=row["status"],
        channel=row["channel"],
        terms=terms_of(row),
        claimed_at=row["claimed_at"],
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
        guide_id=row["guide_id"],
        transaction_id=row["transaction_id"],
        redeemed_at=row["redeemed_at"],
        redeemed_store_id=row["redeemed_store_id"],
        redeemed_car_park_id=row["redeemed_car_park_id"],
    )


async def earlier(
    conn: Connection, keys: Sequence[tuple[str, str, str]]
) -> dict[tuple[str, str, str], Coupon]:
    """Coupons already claimed under these (mall, member, request id) keys.

    The keys are looked up first (the unique index, or one pass over the table), and only then
    joined to their stocks: joined the other way, a planner that thinks a stock has few coupons
    (a flash stock filling up faster than its statistics) scans all of the stock's coupons once
    per key — seconds for a batch of 2,000 at 16,000 coupons."""
    if not keys:
        return {}
    rows = await conn.fetch(
        f"""WITH c AS MATERIALIZED (
                SELECT c.* FROM unnest($1::text[], $2::uuid[], $3::text[]) AS k(m, u, r)
                  JOIN coupons c ON c.mall_id = k.m AND c.member_id = k.u AND c.request_id = k.r)
            SELECT {_COUPON} FROM c
              JOIN stocks s ON s.mall_id = c.mall_id AND s.stock_id = c.stock_id""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
    )
    return {(r["mall_id"], r["member_id"], r["request_id"]): coupon_of(r) for r in rows}


async def holders(conn: Connection, mall_id: str, stock_id: str) -> frozenset[tuple[str, str]]:
    """(member, request id) of every coupon of a stock."""
    rows = await conn.fetch(
        """SELECT member_id::text AS member_id, request_id FROM coupons
            WHERE mall_id = $1 AND stock_id = $2""",
        mall_id,
        stock_id,
    )
    return frozenset((r["member_id"], r["request_id"]) for r in rows)


async def lock_member_counts(
    conn: Connection, keys: Sequence[tuple[str, str, str]]
) -> dict[tuple[str, str, str], int]:
    """Lock (creating at 0) the (mall, stock, member) counters; their current values."""
    if not keys:
        return {}
    ordered = sorted(set(keys))
    args = ([k[0] for k in ordered], [k[1] for k in ordered], [k[2] for k in ordered])
    await conn.execute(
        """INSERT INTO member_claims (mall_id, stock_id, member_id)
           SELECT m, s, u::uuid FROM unnest($1::text[], $2::text[], $3::text[]) AS k(m, s, u)
           ORDER BY m, s, u
           ON CONFLICT DO NOTHING""",
        *args,
    )
    rows = await conn.fetch(
        """SELECT mall_id, stock_id, member_id::text AS member_id, claimed FROM member_claims
            WHERE (mall_id, stock_id, member_id) IN (
                  SELECT m, s, u::uuid
                    FROM unnest($1::text[], $2::text[], $3::text[]) AS k(m, s, u))
            ORDER BY mall_id, stock_id, member_id
            FOR UPDATE""",
        *args,
    )
    return {(r["mall_id"], r["stock_id"], r["member_id"]): r["claimed"] for r in rows}


async def add_member_counts(conn: Connection, added: dict[tuple[str, str, str], int]) -> None:
    if not added:
        return
    keys = sorted(added)
    await conn.execute(
        """UPDATE member_claims mc SET claimed = mc.claimed + k.n
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS k(m, s, u, n)
            WHERE mc.mall_id = k.m AND mc.stock_id = k.s AND mc.member_id = k.u::uuid""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [added[k] for k in keys],
    )


async def lock_member_day_counts(
    conn: Connection, keys: Sequence[tuple[str, str, str, date]]
) -> dict[tuple[str, str, str, date], int]:
    """Lock (creating at 0) the (mall, stock, member, day) counters; their current values."""
    if not keys:
        return {}
    ordered = sorted(set(keys))
    args = tuple([k[n] for k in ordered] for n in range(4))
    await conn.execute(
        """INSERT INTO member_days (mall_id, stock_id, member_id, day)
           SELECT m, s, u::uuid, d
             FROM unnest($1::text[], $2::text[], $3::text[], $4::date[]) AS k(m, s, u, d)
            ORDER BY m, s, u::uuid, d
           ON CONFLICT DO NOTHING""",
        *args,
    )
    rows = await conn.fetch(
        """SELECT mall_id, stock_id, member_id::text AS member_id, day, claimed FROM member_days
            WHERE (mall_id, stock_id, member_id, day) IN (
                  SELECT m, s, u::uuid, d
                    FROM unnest($1::text[], $2::text[], $3::text[], $4::date[]) AS k(m, s, u, d))
            ORDER BY mall_id, stock_id, member_id, day
            FOR UPDATE""",
        *args,
    )
    return {(r["mall_id"], r["stock_id"], r["member_id"], r["day"]): r["claimed"] for r in rows}


async def add_member_day_counts(
    conn: Connection, added: dict[tuple[str, str, str, date], int]
) -> None:
    if not added:
        return
    keys = sorted(added)
    await conn.execute(
        """UPDATE member_days md SET claimed = md.claimed + k.n
             FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::int[])
                  AS k(m, s, u, d, n)
            WHERE md.mall_id = k.m AND md.stock_id = k.s AND md.member_id = k.u::uuid
              AND md.day = k.d""",
        *([k[n] for k in keys] for n in range(4)),
        [added[k] for k in keys],
    )


async def lock_day_counts(
    conn: Connection, keys: Sequence[tuple[str, str, date]]
) -> dict[tuple[str, str, date], int]:
    if not keys:
        return {}
    ordered = sorted(set(keys))
    args = ([k[0] for k in ordered], [k[1] for k in ordered], [k[2] for k in ordered])
    await conn.execute(
        """INSERT INTO stock_days (mall_id, stock_id, day)
           SELECT m, s, d FROM unnest($1::text[], $2::text[], $3::date[]) AS k(m, s, d)
           ORDER BY m, s, d
           ON CONFLICT DO NOTHING""",
        *args,
    )
    rows = await conn.fetch(
        """SELECT mall_id, stock_id, day, claimed FROM stock_days
            WHERE (mall_id, stock_id, day) IN (
                  SELECT * FROM unnest($1::text[], $2::text[], $3::date[]))
            ORDER BY mall_id, stock_id, day
            FOR UPDATE""",
        *args,
    )
    return {(r["mall_id"], r["stock_id"], r["day"]): r["claimed"] for r in rows}


async def add_day_counts(conn: Connection, added: dict[tuple[str, str, date], int]) -> None:
    if not added:
        return
    keys = sorted(added)
    await conn.execute(
        """UPDATE stock_days sd SET claimed = sd.claimed + k.n
             FROM unnest($1::text[], $2::text[], $3::date[], $4::int[]) AS k(m, s, d, n)
            WHERE sd.mall_id = k.m AND sd.stock_id = k.s AND sd.day = k.d""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [added[k] for k in keys],
    )


async def lock_stock_counts(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, int]]:
    """Lock the stocks' rows (the hot rows: once per batch); (claimed, issuable) of each."""
    ordered = sorted(set(keys))
    rows = await conn.fetch(
        """SELECT mall_id, stock_id, claimed, issuable FROM stocks
            WHERE (mall_id, stock_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
            ORDER BY mall_id, stock_id
            FOR NO KEY UPDATE""",
        [k[0] for k in ordered],
        [k[1] for k in ordered],
    )
    return {(r["mall_id"], r["stock_id"]): (r["claimed"], r["issuable"]) for r in rows}


async def add_stock_counts(conn: Connection, added: dict[tuple[str, str], int]) -> None:
    if not added:
        return
    keys = sorted(added)
    await conn.execute(
        """UPDATE stocks s SET claimed = s.claimed + k.n
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(m, id, n)
            WHERE s.mall_id = k.m AND s.stock_id = k.id""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [added[k] for k in keys],
    )


async def insert_coupons(
    conn: Connection,
    rows: Sequence[tuple[Claim, str, str, datetime, datetime, datetime]],
) -> int:
    """Insert (claim, coupon id, tenant, claimed at, valid from, valid until) rows; the number
    inserted (fewer means a concurrent batch claimed one of these keys first)."""
    status = await conn.execute(
        """INSERT INTO coupons (mall_id, coupon_id, stock_id, tenant_id, member_id, channel,
               guide_id, claim_code, request_id, transaction_id, rule_id, points_hold_id,
               claimed_at, valid_from, valid_until)
           SELECT m, id, s, t, u::uuid, ch, g, cc, r, tx, ru, h, ca, vf, vu
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                         $12::text[], $13::timestamptz[], $14::timestamptz[],
                         $15::timestamptz[])
                  AS k(m, id, s, t, u, ch, g, cc, r, tx, ru, h, ca, vf, vu)
           ON CONFLICT DO NOTHING""",
        [c.mall_id for c, *_ in rows],
        [r[1] for r in rows],
        [c.stock_id for c, *_ in rows],
        [r[2] for r in rows],
        [c.member_id for c, *_ in rows],
        [c.channel.value for c, *_ in rows],
        [c.guide_id for c, *_ in rows],
        [c.claim_code for c, *_ in rows],
        [c.request_id for c, *_ in rows],
        [c.transaction_id for c, *_ in rows],
        [c.rule_id for c, *_ in rows],
        [c.points_hold_id for c, *_ in rows],
        [r[3] for r in rows],
        [r[4] for r in rows],
        [r[5] for r in rows],
    )
    return int(status.rsplit(" ", 1)[-1])
