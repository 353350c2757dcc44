"""Post-payment rules, claim codes and seen refunds in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kit.db import Connection

from coupons.domain.post_payment import Refund, Rule


def _rule(row: Any) -> Rule:
    return Rule(
        mall_id=row["mall_id"],
        rule_id=row["rule_id"],
        stock_id=row["stock_id"],
        owner_tenant=row["owner_tenant"],
        min_amount_fen=row["min_amount_fen"],
        tenant_ids=tuple(row["tenant_ids"]),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        enabled=row["enabled"],
        version=row["version"],
        stock_tenant=row.get("stock_tenant", ""),
    )


async def put_rule(conn: Connection, rule: Rule) -> Rule | None:
    row = await conn.fetchrow(
        """INSERT INTO post_payment_rules (mall_id, rule_id, stock_id, owner_tenant,
               min_amount_fen, tenant_ids, starts_at, ends_at, enabled)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (mall_id, rule_id) DO UPDATE SET
               stock_id = EXCLUDED.stock_id, min_amount_fen = EXCLUDED.min_amount_fen,
               tenant_ids = EXCLUDED.tenant_ids, starts_at = EXCLUDED.starts_at,
               ends_at = EXCLUDED.ends_at, enabled = EXCLUDED.enabled,
               version = post_payment_rules.version + 1, updated_at = now()
             WHERE post_payment_rules.owner_tenant = EXCLUDED.owner_tenant
           RETURNING *""",
        rule.mall_id,
        rule.rule_id,
        rule.stock_id,
        rule.owner_tenant,
        rule.min_amount_fen,
        list(rule.tenant_ids),
        rule.starts_at,
        rule.ends_at,
        rule.enabled,
    )
    return _rule(row) if row is not None else None  # None: another owner's rule id


async def rule_owner(conn: Connection, mall_id: str, rule_id: str) -> str | None:
    owner: str | None = await conn.fetchval(
        "SELECT owner_tenant FROM post_payment_rules WHERE mall_id = $1 AND rule_id = $2",
        mall_id,
        rule_id,
    )
    return owner


async def rules_for(conn: Connection, mall_ids: Sequence[str]) -> list[Rule]:
    """Enabled rules of these malls with the tenant of each rule's stock."""
    rows = await conn.fetch(
        """SELECT r.*, s.tenant_id AS stock_tenant FROM post_payment_rules r
             JOIN stocks s ON s.mall_id = r.mall_id AND s.stock_id = r.stock_id
            WHERE r.mall_id = ANY($1::text[]) AND r.enabled
            ORDER BY r.mall_id, r.rule_id""",
        list(set(mall_ids)),
    )
    return [_rule(r) for r in rows]


async def refunded_payments(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        """SELECT DISTINCT mall_id, transaction_id FROM refunds
            WHERE (mall_id, transaction_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["mall_id"], r["transaction_id"]) for r in rows}


async def record_refunds(conn: Connection, refunds: Sequence[Refund]) -> set[tuple[str, str]]:
    """Record refunds (once each); the (mall, transaction) payments now refunded in full."""
    await conn.execute(
        """INSERT INTO refunds (mall_id, refund_id, transaction_id, refund_amount_fen,
               pay_amount_fen)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
           ON CONFLICT DO NOTHING""",
        [r.mall_id for r in refunds],
        [r.refund_id for r in refunds],
        [r.transaction_id for r in refunds],
        [r.refund_amount_fen for r in refunds],
        [r.pay_amount_fen for r in refunds],
    )
    rows = await conn.fetch(
        """SELECT mall_id, transaction_id FROM refunds
            WHERE (mall_id, transaction_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
            GROUP BY mall_id, transaction_id
           HAVING sum(refund_amount_fen) >= max(pay_amount_fen)""",
        [r.mall_id for r in refunds],
        [r.transaction_id for r in refunds],
    )
    return {(r["mall_id"], r["transaction_id"]) for r in rows}


@dataclass(frozen=True)
class Code:
    mall_id: str
    code: str
    stock_id: str
    channel: str
    guide_id: str


async def create_code(conn: Connection, code: Code) -> Code | None:
    """The code, or None when the code exists for another stock or guide."""
    row = await conn.fetchrow(
        """INSERT INTO claim_codes (mall_id, code, stock_id, channel, guide_id)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (mall_id, code) DO UPDATE SET code = EXCLUDED.code
           RETURNING mall_id, code, stock_id, channel, guide_id""",
        code.mall_id,
        code.code,
        code.stock_id,
        code.channel,
        code.guide_id,
    )
    found = Code(*row) if row is not None else None
    return found if found == code else None


async def get_code(conn: Connection, mall_id: str, code: str) -> Code | None:
    row = await conn.fetchrow(
        """SELECT mall_id, code, stock_id, channel, guide_id FROM claim_codes
            WHERE mall_id = $1 AND code = $2""",
        mall_id,
        code,
    )
    return Code(*row) if row is not None else None
