"""Stocks in PostgreSQL: create (idempotent on request id), read, list, pause."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kit.db import Connection
from kit.errors import Conflict

from coupons.domain.stocks import Kind, NewStock, Stock, Terms

_COLUMNS = """mall_id, stock_id, tenant_id, title, description, kind, discount_fen, threshold_fen,
    percent_off, max_discount_fen, parking_minutes, max_coupons, budget_fen, issuable,
    max_per_member, max_per_day, store_ids, tenant_ids, audience_tiers, audience_tags,
    claim_starts_at, claim_ends_at, valid_from, valid_until, valid_days, points_price, paused,
    claimed, created_at, max_per_member_per_day"""


def terms_of(row: Any) -> Terms:
    return Terms(
        kind=Kind(row["kind"]),
        title=row["title"],
        description=row["description"],
        discount_fen=row["discount_fen"],
        threshold_fen=row["threshold_fen"],
        percent_off=row["percent_off"],
        max_discount_fen=row["max_discount_fen"],
        parking_minutes=row["parking_minutes"],
        store_ids=tuple(row["store_ids"]),
        tenant_ids=tuple(row["tenant_ids"]),
    )


def _stock(row: Any) -> Stock:
    return Stock(
        mall_id=row["mall_id"],
        stock_id=row["stock_id"],
        tenant_id=row["tenant_id"],
        terms=terms_of(row),
        max_coupons=row["max_coupons"],
        budget_fen=row["budget_fen"],
        issuable=row["issuable"],
        max_per_member=row["max_per_member"],
        max_per_day=row["max_per_day"],
        audience_tiers=tuple(row["audience_tiers"]),
        audience_tags=tuple(row["audience_tags"]),
        claim_starts_at=row["claim_starts_at"],
        claim_ends_at=row["claim_ends_at"],
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
        valid_days=row["valid_days"],
        points_price=row["points_price"],
        paused=row["paused"],
        claimed=row["claimed"],
        created_at=row["created_at"],
        max_per_member_per_day=row["max_per_member_per_day"],
    )


async def create(conn: Connection, new: NewStock) -> tuple[Stock, bool]:
    """The stock and whether it was created now (False: a retry of ``new.request_id``)."""
    t = new.terms
    row = await conn.fetchrow(
        f"""INSERT INTO stocks (mall_id, stock_id, tenant_id, title, description, kind,
                discount_fen, threshold_fen, percent_off, max_discount_fen, parking_minutes,
                max_coupons, budget_fen, issuable, max_per_member, max_per_day, store_ids,
                tenant_ids, audience_tiers, audience_tags, claim_starts_at, claim_ends_at,
                valid_from, valid_until, valid_days, points_price, request_id,
                max_per_member_per_day)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                    $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)
            ON CONFLICT (mall_id, tenant_id, request_id) DO NOTHING
            RETURNING {_COLUMNS}""",
        new.mall_id,
        str(uuid.uuid4()),
        new.tenant_id,
        t.title,
        t.description,
        t.kind.value,
        t.discount_fen,
        t.threshold_fen,
        t.percent_off,
        t.max_discount_fen,
        t.parking_minutes,
        new.max_coupons,
        new.budget_fen,
        new.issuable(),
        new.max_per_member,
        new.max_per_day,
        list(t.store_ids),
        list(t.tenant_ids),
        list(new.audience_tiers),
        list(new.audience_tags),
        new.claim_starts_at,
        new.claim_ends_at,
        new.valid_from,
        new.valid_until,
        new.valid_days,
        new.points_price,
        new.request_id,
        new.max_per_member_per_day,
    )
    if row is not None:
        return _stock(row), True
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM stocks
             WHERE mall_id = $1 AND tenant_id = $2 AND request_id = $3""",
        new.mall_id,
        new.tenant_id,
        new.request_id,
    )
    if row is None or row["title"] != t.title or row["kind"] != t.kind.value:
        raise Conflict("request_id_reused", "request_id was used for a different stock")
    return _stock(row), False


async def get(conn: Connection, mall_id: str, stock_id: str) -> Stock | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM stocks WHERE mall_id = $1 AND stock_id = $2", mall_id, stock_id
    )
    return _stock(row) if row is not None else None


async def get_many(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Stock]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM stocks
             WHERE (mall_id, stock_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["mall_id"], r["stock_id"]): _stock(r) for r in rows}


async def page(
    conn: Connection,
    mall_id: str,
    *,
    tenant_id: str | None,
    status: str | None,
    now: datetime,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Stock]:
    """Newest first; ``status`` filters on active / paused / exhausted / ended."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM stocks
             WHERE mall_id = $1
               AND ($2::text IS NULL OR tenant_id = $2)
               AND ($4::timestamptz IS NULL OR (created_at, stock_id) < ($4, $5))
               AND CASE $3::text
                     WHEN 'ended' THEN claim_ends_at <= $6
                     WHEN 'exhausted' THEN claim_ends_at > $6 AND claimed >= issuable
                     WHEN 'paused' THEN claim_ends_at > $6 AND claimed < issuable AND paused
                     WHEN 'active' THEN claim_ends_at > $6 AND claimed < issuable AND NOT paused
                     ELSE true END
             ORDER BY created_at DESC, stock_id DESC
             LIMIT $7""",
        mall_id,
        tenant_id,
        status,
        after[0] if after else None,
        after[1] if after else "",
        now,
        limit,
    )
    return [_stock(r) for r in rows]
