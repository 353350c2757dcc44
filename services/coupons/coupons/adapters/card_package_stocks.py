"""SQL of the card package mirror's flagged stocks (their creation at the platform is queued
and leased like the coupons', see ``card_package``) and of the payers' WeChat identities."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kit.db import Connection

from coupons.domain.card_package import StockTerms


@dataclass(frozen=True)
class StockClaim:
    mall_id: str
    stock_id: str
    request: dict[str, Any]
    attempts: int
    failures: int


# -- stocks ---------------------------------------------------------------------------------


async def stock_terms(conn: Connection, mall_id: str, stock_id: str) -> StockTerms | None:
    """The mall stock's terms (the coupons core's ``stocks`` table), None if unknown."""
    row = await conn.fetchrow(
        """SELECT title, description, kind, discount_fen, threshold_fen, percent_off,
                  issuable, max_per_member, claim_starts_at,
                  COALESCE(valid_until, claim_ends_at + make_interval(days => valid_days))
                      AS available_until
             FROM stocks WHERE mall_id = $1 AND stock_id = $2""",
        mall_id,
        stock_id,
    )
    if row is None:
        return None
    return StockTerms(
        title=row["title"],
        description=row["description"],
        kind=row["kind"],
        discount_fen=row["discount_fen"],
        threshold_fen=row["threshold_fen"],
        percent_off=row["percent_off"],
        max_coupons=row["issuable"],
        max_per_member=row["max_per_member"],
        available_from=row["claim_starts_at"],
        available_until=row["available_until"],
    )


async def flag_stock(
    conn: Connection, mall_id: str, stock_id: str, request: dict[str, Any]
) -> bool:
    """Flag a stock for the card package (queue its creation); False if flagged before."""
    done = await conn.fetchval(
        """INSERT INTO card_package_stocks (mall_id, stock_id, request, out_request_no)
           VALUES ($1, $2, $3::jsonb, $4)
           ON CONFLICT (mall_id, stock_id) DO NOTHING RETURNING true""",
        mall_id,
        stock_id,
        json.dumps(request, ensure_ascii=False),
        request["out_request_no"],
    )
    return bool(done)


async def claim_stocks(conn: Connection, limit: int, lease_s: float) -> list[StockClaim]:
    rows = await conn.fetch(
        """WITH due AS (
             SELECT mall_id, stock_id FROM card_package_stocks
              WHERE state = 'pending' AND next_attempt_at <= now()
              ORDER BY next_attempt_at LIMIT $1
                FOR UPDATE SKIP LOCKED)
           UPDATE card_package_stocks s
              SET attempts = s.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
             FROM due WHERE s.mall_id = due.mall_id AND s.stock_id = due.stock_id
           RETURNING s.mall_id, s.stock_id, s.request, s.attempts, s.failures""",
        limit,
        lease_s,
    )
    return [
        StockClaim(
            r["mall_id"], r["stock_id"], json.loads(r["request"]), r["attempts"], r["failures"]
        )
        for r in rows
    ]


async def save_stock(
    conn: Connection,
    claim: StockClaim,
    *,
    platform_stock_id: str = "",
    refused: bool = False,
    retry_in_s: float = 0.0,
    code: str = "",
    error: str = "",
) -> bool:
    """Created (``platform_stock_id``), refused, or retried after ``retry_in_s``."""
    done = await conn.fetchval(
        """UPDATE card_package_stocks
              SET state = CASE WHEN $3 <> '' THEN 'created'
                               WHEN $4 THEN 'refused' ELSE 'pending' END,
                  platform_stock_id = $3,
                  created_at = CASE WHEN $3 <> '' THEN now() END,
                  failures = CASE WHEN $3 <> '' THEN 0 ELSE failures + 1 END,
                  next_attempt_at = now() + make_interval(secs => $5),
                  last_error_code = $6, last_error = $7
            WHERE mall_id = $1 AND stock_id = $2 AND attempts = $8 AND state = 'pending'
           RETURNING true""",
        claim.mall_id,
        claim.stock_id,
        platform_stock_id,
        refused,
        retry_in_s,
        code,
        error[:1000],
        claim.attempts,
    )
    if done and platform_stock_id:  # coupons that waited for the stock are due now
        await conn.execute(
            """UPDATE card_package_coupons SET next_attempt_at = now()
                WHERE mall_id = $1 AND stock_id = $2 AND status = 'pending'""",
            claim.mall_id,
            claim.stock_id,
        )
    return bool(done)


# -- payers ---------------------------------------------------------------------------------


async def put_payers(conn: Connection, payers: list[tuple[str, str, str, str]]) -> None:
    """(mall_id, member_id, appid, openid): the latest WeChat identity of each member."""
    if not payers:
        return
    await conn.executemany(
        """INSERT INTO card_package_payers (mall_id, member_id, appid, openid)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (mall_id, member_id) DO UPDATE
              SET appid = EXCLUDED.appid, openid = EXCLUDED.openid, updated_at = now()
            WHERE (card_package_payers.appid, card_package_payers.openid)
                  IS DISTINCT FROM (EXCLUDED.appid, EXCLUDED.openid)""",
        payers,
    )
    # Coupons waiting for their holder's identity are due now.
    await conn.execute(
        """UPDATE card_package_coupons c SET next_attempt_at = now()
             FROM unnest($1::text[], $2::text[]) AS p(m, u)
            WHERE c.mall_id = p.m AND c.member_id = p.u AND c.status = 'pending'
              AND c.next_attempt_at > now()""",
        [p[0] for p in payers],
        [p[1] for p in payers],
    )
