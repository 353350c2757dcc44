"""Coupons in PostgreSQL after the claim: the wallet, redemption (核销), revocation and return
after refunds, and a stock's figures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventbus.outbox import NOTIFY_CHANNEL, OutgoingEvent
from kit.db import Connection

from coupons.adapters.claims import COUPON_FROM, coupon_of
from coupons.adapters.stocks import terms_of
from coupons.domain.coupons import Coupon
from coupons.domain.redemption import Held


async def wallet(
    conn: Connection,
    mall_id: str,
    member_id: str,
    *,
    status: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Coupon]:
    """A member's coupons, newest first. ``status`` 'available' means usable now (not past
    its validity); 'expired' includes available ones past it."""
    rows = await conn.fetch(
        f"""{COUPON_FROM}
             WHERE c.mall_id = $1 AND c.member_id = $2::uuid
               AND ($4::timestamptz IS NULL OR (c.claimed_at, c.coupon_id) < ($4, $5))
               AND CASE $3::text
                     WHEN 'available' THEN c.status = 'available' AND c.valid_until > now()
                     WHEN 'expired' THEN c.status = 'expired'
                          OR (c.status = 'available' AND c.valid_until <= now())
                     WHEN 'used' THEN c.status = 'used'
                     WHEN 'revoked' THEN c.status = 'revoked'
                     ELSE true END
             ORDER BY c.claimed_at DESC, c.coupon_id DESC
             LIMIT $6""",
        mall_id,
        member_id,
        status,
        after[0] if after else None,
        after[1] if after else "",
        limit,
    )
    return [coupon_of(r) for r in rows]


_LOCKED_FROM = COUPON_FROM.replace(
    "SELECT ", "SELECT c.use_request_id, c.discount_fen AS used_fen, c.order_transaction_id, ", 1
)


@dataclass(frozen=True)
class Locked:
    held: Held
    coupon: Coupon
    order_transaction_id: str


async def lock(conn: Connection, mall_id: str, coupon_id: str) -> Locked | None:
    """The coupon with its stock's terms, locked for this transaction."""
    row = await conn.fetchrow(
        f"""{_LOCKED_FROM}
             WHERE c.mall_id = $1 AND c.coupon_id = $2
             FOR UPDATE OF c""",
        mall_id,
        coupon_id,
    )
    if row is None:
        return None
    return Locked(_held(row), coupon_of(row), row["order_transaction_id"])


def _held(row: Any) -> Held:
    return Held(
        mall_id=row["mall_id"],
        coupon_id=row["coupon_id"],
        stock_id=row["stock_id"],
        tenant_id=row["tenant_id"],
        member_id=row["member_id"],
        status=row["status"],
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
        terms=terms_of(row),
        use_request_id=row["use_request_id"],
        redeemed_store_id=row["redeemed_store_id"],
        discount_fen=row["used_fen"],
    )


async def mark_used(
    conn: Connection,
    mall_id: str,
    coupon_id: str,
    *,
    at: datetime,
    store_id: str,
    use_request_id: str,
    order_amount_fen: int,
    discount_fen: int,
    transaction_id: str,
) -> None:
    await conn.execute(
        """UPDATE coupons SET status = 'used', redeemed_at = $3, redeemed_store_id = $4,
                  use_request_id = $5, order_amount_fen = $6, discount_fen = $7,
                  order_transaction_id = $8
            WHERE mall_id = $1 AND coupon_id = $2""",
        mall_id,
        coupon_id,
        at,
        store_id,
        use_request_id,
        order_amount_fen,
        discount_fen,
        transaction_id,
    )


@dataclass(frozen=True)
class Changed:
    mall_id: str
    coupon_id: str
    stock_id: str
    member_id: str
    transaction_id: str


async def revoke_unused_from_payments(
    conn: Connection, keys: Sequence[tuple[str, str]], at: datetime, reason: str
) -> list[Changed]:
    """Revoke the unused post-payment coupons earned by these (mall, transaction) payments."""
    rows = await conn.fetch(
        """UPDATE coupons c SET status = 'revoked', revoked_at = $3, revoked_reason = $4
             FROM unnest($1::text[], $2::text[]) AS k(m, tx)
            WHERE c.mall_id = k.m AND c.transaction_id = k.tx AND c.transaction_id <> ''
              AND c.channel = 'post_payment' AND c.status = 'available'
           RETURNING c.mall_id, c.coupon_id, c.stock_id, c.member_id::text, c.transaction_id""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        at,
        reason,
    )
    return [Changed(*r) for r in rows]


async def return_used_on_orders(
    conn: Connection, keys: Sequence[tuple[str, str]], at: datetime
) -> list[Changed]:
    """Make coupons used on these fully refunded (mall, transaction) orders usable again,
    when still valid."""
    rows = await conn.fetch(
        """UPDATE coupons c SET status = 'available', redeemed_at = NULL,
                  redeemed_store_id = '', use_request_id = NULL, order_amount_fen = 0,
                  discount_fen = 0, order_transaction_id = ''
             FROM unnest($1::text[], $2::text[]) AS k(m, tx)
            WHERE c.mall_id = k.m AND c.order_transaction_id = k.tx
              AND c.order_transaction_id <> '' AND c.status = 'used' AND c.valid_until > $3
           RETURNING c.mall_id, c.coupon_id, c.stock_id, c.member_id::text, k.tx""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        at,
    )
    return [Changed(*r) for r in rows]


@dataclass(frozen=True)
class Figures:
    channel: str
    guide_id: str
    claimed: int
    redeemed: int


async def figures(conn: Connection, mall_id: str, stock_id: str) -> list[Figures]:
    rows = await conn.fetch(
        """SELECT channel, guide_id, count(*) AS claimed,
                  count(*) FILTER (WHERE status = 'used') AS redeemed
             FROM coupons WHERE mall_id = $1 AND stock_id = $2
            GROUP BY channel, guide_id ORDER BY channel, guide_id""",
        mall_id,
        stock_id,
    )
    return [Figures(r["channel"], r["guide_id"], r["claimed"], r["redeemed"]) for r in rows]


async def read_many(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Locked]:
    """Coupons with their stocks' terms, unlocked (the redemption batch's first look)."""
    rows = await conn.fetch(
        f"""{_LOCKED_FROM}
             WHERE (c.mall_id, c.coupon_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {
        (r["mall_id"], r["coupon_id"]): Locked(_held(r), coupon_of(r), r["order_transaction_id"])
        for r in rows
    }


_NOTIFY = f", pg_notify('{NOTIFY_CHANNEL}', '') AS notified"


@dataclass(frozen=True)
class Usage:
    """One coupon to mark used, with the event that says so."""

    mall_id: str
    coupon_id: str
    store_id: str
    use_request_id: str
    order_amount_fen: int
    discount_fen: int
    transaction_id: str
    event: OutgoingEvent


async def use_if_available(
    conn: Connection, usages: Sequence[Usage], at: datetime, *, notify: bool = True
) -> set[str]:
    """Mark coupons used and queue their events in ONE statement (atomic on its own: no
    BEGIN / COMMIT round trips on the POS's hot path), each only if it is still available and
    valid at ``at``. The coupon ids used; the others changed under the caller (a concurrent
    use won) and are answered through the locked path."""
    rows = await conn.fetch(
        f"""WITH used AS (
                UPDATE coupons c SET status = 'used', redeemed_at = $1,
                       redeemed_store_id = k.store, use_request_id = k.use_id,
                       order_amount_fen = k.amount, discount_fen = k.off,
                       order_transaction_id = k.tx
                  FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                              $7::bigint[], $8::text[]) AS k(m, id, store, use_id, amount, off, tx)
                 WHERE c.mall_id = k.m AND c.coupon_id = k.id
                   -- the primary key, whatever the estimates of a generic plan:
                   AND c.mall_id = ANY($2::text[]) AND c.coupon_id = ANY($3::text[])
                   AND c.status = 'available' AND c.valid_from <= $1 AND c.valid_until > $1
                RETURNING c.mall_id, c.coupon_id),
            queued AS (
                INSERT INTO outbox (event_id, mall_id, subject, payload, headers)
                SELECT e.event_id, e.m, e.subject, e.payload, e.headers::jsonb
                  FROM unnest($2::text[], $3::text[], $9::text[], $10::text[], $11::bytea[],
                              $12::text[]) AS e(m, id, event_id, subject, payload, headers)
                  JOIN used ON used.mall_id = e.m AND used.coupon_id = e.id
                RETURNING 1)
            SELECT coupon_id, (SELECT count(*) FROM queued) AS queued{_NOTIFY if notify else ""}
              FROM used""",
        at,
        [u.mall_id for u in usages],
        [u.coupon_id for u in usages],
        [u.store_id for u in usages],
        [u.use_request_id for u in usages],
        [u.order_amount_fen for u in usages],
        [u.discount_fen for u in usages],
        [u.transaction_id for u in usages],
        [u.event.event_id for u in usages],
        [u.event.subject for u in usages],
        [u.event.payload for u in usages],
        [json.dumps(u.event.headers) for u in usages],
    )
    return {r["coupon_id"] for r in rows}


async def wallet_summary(
    conn: Connection, mall_id: str, member_id: str, now: datetime
) -> tuple[int, datetime | None]:
    """(coupons available and not past their validity, the soonest end of validity)."""
    row = await conn.fetchrow(
        """SELECT count(*) AS n, min(valid_until) AS next_expiry FROM coupons
            WHERE mall_id = $1 AND member_id = $2::uuid AND status = 'available'
              AND valid_until > $3""",
        mall_id,
        member_id,
        now,
    )
    assert row is not None  # an aggregate always answers one row
    return row["n"], row["next_expiry"]
