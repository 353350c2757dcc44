"""SQL of the card package mirror's mirrored coupons (flagged stocks and payers:
``card_package_stocks``).

Claims work like the other outbound queues: due rows are picked ``FOR UPDATE SKIP LOCKED`` and
leased (``next_attempt_at`` past the call's timeout, ``attempts`` + 1) in one statement that
commits before the HTTP call; an outcome is saved only while ``attempts`` still matches.
The worker's queries span malls, like the outbox relay's; the rest is by mall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kit.db import Connection


@dataclass(frozen=True)
class CouponClaim:
    mall_id: str
    coupon_id: str
    coupon_code: str
    wanted: str
    platform: str
    use_time: datetime | None
    cycle: int
    attempts: int
    failures: int
    platform_stock_id: str
    appid: str
    openid: str


# -- coupons --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wish:
    """What the platform should show for one coupon (``domain.card_package.settle``)."""

    mall_id: str
    coupon_id: str
    stock_id: str
    member_id: str
    code: str
    wanted: str
    use_time: datetime | None = None


async def flagged_stocks(conn: Connection, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (mall, stock) are mirrored to the card package (not refused)."""
    rows = await conn.fetch(
        """SELECT mall_id, stock_id FROM card_package_stocks
            WHERE (mall_id, stock_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
              AND state <> 'refused'""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["mall_id"], r["stock_id"]) for r in rows}


async def want(conn: Connection, wishes: Sequence[Wish]) -> int:
    """Record what the platform should show for coupons of flagged stocks, in one statement
    (a coupon of another stock is ignored), at most one wish per coupon: the rows stored
    follow ``settle`` — ``sent`` never overrides a later wish; ``used`` and ``deactivated`` are
    final, the first one recorded wins. How many rows changed."""
    if not wishes:
        return 0
    rows = await conn.fetch(
        """INSERT INTO card_package_coupons
               (mall_id, coupon_id, stock_id, member_id, coupon_code, wanted, use_time)
           SELECT w.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::timestamptz[])
                       AS w(mall_id, coupon_id, stock_id, member_id, code, wanted, use_time)
            WHERE EXISTS (SELECT 1 FROM card_package_stocks s
                           WHERE s.mall_id = w.mall_id AND s.stock_id = w.stock_id
                             AND s.state <> 'refused')
           ON CONFLICT (mall_id, coupon_id) DO UPDATE
              SET wanted = EXCLUDED.wanted, use_time = EXCLUDED.use_time, status = 'pending',
                  failures = 0, next_attempt_at = now(), updated_at = now()
            WHERE card_package_coupons.wanted = 'sent' AND EXCLUDED.wanted <> 'sent'
           RETURNING true""",
        [w.mall_id for w in wishes],
        [w.coupon_id for w in wishes],
        [w.stock_id for w in wishes],
        [w.member_id for w in wishes],
        [w.code for w in wishes],
        [w.wanted for w in wishes],
        [w.use_time for w in wishes],
    )
    return len(rows)


async def want_returned(conn: Connection, mall_id: str, coupon_id: str) -> bool:
    """A used coupon is usable again: the platform should show it available (a new cycle)."""
    done = await conn.fetchval(
        """UPDATE card_package_coupons
              SET wanted = 'sent', use_time = NULL, cycle = cycle + 1, status = 'pending',
                  failures = 0, next_attempt_at = now(), updated_at = now()
            WHERE mall_id = $1 AND coupon_id = $2 AND wanted = 'used'
           RETURNING true""",
        mall_id,
        coupon_id,
    )
    return bool(done)


async def claim_coupons(conn: Connection, limit: int, lease_s: float) -> list[CouponClaim]:
    """Due coupons whose stock exists at the platform and whose holder it knows. A coupon's
    holder (appid, openid) is pinned at its first claim: every later call names the identity
    it was sent to, whatever its member's identity has become since (a merge, another appid)."""
    rows = await conn.fetch(
        """WITH due AS (
             SELECT c.mall_id, c.coupon_id, s.platform_stock_id,
                    CASE WHEN c.openid <> '' THEN c.appid ELSE p.appid END AS appid,
                    CASE WHEN c.openid <> '' THEN c.openid ELSE p.openid END AS openid
               FROM card_package_coupons c
               JOIN card_package_stocks s
                 ON s.mall_id = c.mall_id AND s.stock_id = c.stock_id AND s.state = 'created'
               LEFT JOIN card_package_payers p
                 ON p.mall_id = c.mall_id AND p.member_id = c.member_id
              WHERE c.status = 'pending' AND c.next_attempt_at <= now()
                AND (c.openid <> '' OR p.openid IS NOT NULL)
              ORDER BY c.next_attempt_at LIMIT $1
                FOR UPDATE OF c SKIP LOCKED)
           UPDATE card_package_coupons c
              SET attempts = c.attempts + 1, next_attempt_at = now() + make_interval(secs => $2),
                  appid = due.appid, openid = due.openid
             FROM due WHERE c.mall_id = due.mall_id AND c.coupon_id = due.coupon_id
           RETURNING c.mall_id, c.coupon_id, c.coupon_code, c.wanted, c.platform, c.use_time,
                     c.cycle, c.attempts, c.failures, due.platform_stock_id, due.appid,
                     due.openid""",
        limit,
        lease_s,
    )
    return [
        CouponClaim(
            r["mall_id"],
            r["coupon_id"],
            r["coupon_code"],
            r["wanted"],
            r["platform"],
            r["use_time"],
            r["cycle"],
            r["attempts"],
            r["failures"],
            r["platform_stock_id"],
            r["appid"],
            r["openid"],
        )
        for r in rows
    ]


async def save_coupon(
    conn: Connection,
    claim: CouponClaim,
    *,
    platform: str | None = None,
    refused: bool = False,
    retry_in_s: float = 0.0,
    code: str = "",
    error: str = "",
) -> bool:
    """A step done (``platform``: what the platform now holds), refused, or to retry. The
    coupon is synced once the platform holds what is wanted; otherwise due again at once."""
    done = await conn.fetchval(
        """UPDATE card_package_coupons
              SET platform = COALESCE($3, platform),
                  status = CASE WHEN $4 THEN 'refused'
                                WHEN COALESCE($3, platform) = wanted THEN 'synced'
                                ELSE 'pending' END,
                  failures = CASE WHEN $3 IS NULL THEN failures + 1 ELSE 0 END,
                  next_attempt_at = now() + make_interval(secs => $5),
                  last_error_code = $6, last_error = $7, updated_at = now()
            WHERE mall_id = $1 AND coupon_id = $2 AND attempts = $8
           RETURNING true""",
        claim.mall_id,
        claim.coupon_id,
        platform,
        refused,
        retry_in_s,
        code,
        error[:1000],
        claim.attempts,
    )
    return bool(done)


async def settle_final(conn: Connection, claim: CouponClaim) -> None:
    """The platform's coupon is final (used or deactivated) but the mall wants otherwise:
    nothing can move it; recorded as refused for ops to see."""
    await save_coupon(
        conn,
        claim,
        refused=True,
        code="PLATFORM_FINAL",
        error=f"the platform's coupon is {claim.platform}; the mall wants {claim.wanted}",
    )


async def status(conn: Connection, mall_id: str) -> dict[str, Any]:
    """What ops look at: the mall's flagged stocks and its coupons by mirror state."""
    stocks = await conn.fetch(
        """SELECT stock_id, state, platform_stock_id, attempts, last_error_code, last_error
             FROM card_package_stocks WHERE mall_id = $1 ORDER BY flagged_at""",
        mall_id,
    )
    coupons = await conn.fetch(
        """SELECT status, wanted, platform, count(*) AS n FROM card_package_coupons
            WHERE mall_id = $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
        mall_id,
    )
    problems = await conn.fetch(
        """SELECT coupon_id, wanted, platform, status, attempts, last_error_code, last_error
             FROM card_package_coupons
            WHERE mall_id = $1 AND (status = 'refused' OR (status = 'pending' AND failures > 0))
            ORDER BY updated_at LIMIT 100""",
        mall_id,
    )
    return {
        "stocks": [dict(r) for r in stocks],
        "coupons": [dict(r) for r in coupons],
        "problems": [dict(r) for r in problems],
    }
