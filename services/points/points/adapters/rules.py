"""SQL for earning rules: append a version, load a batch's rules, page the current ones."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kit.db import Connection

from points.domain.rules import EarningRule

_COLUMNS = """mall_id, rule_id, version, name, tier_code, tenant_id, sources, spend_unit_fen,
              points_per_unit, min_amount_fen, priority, starts_at, ends_at, recorded_at"""


def _rule(row: Any) -> EarningRule:
    values = dict(row)
    values["sources"] = frozenset(values["sources"])
    return EarningRule(**values)


async def put_rule(
    conn: Connection, rule: EarningRule, recorded_at: datetime | None = None
) -> EarningRule:
    """Append the rule's next version (1 for a new rule), in force from ``recorded_at``
    (now by default). Concurrent puts of one rule queue on a transaction lock."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        f"earning_rules/{rule.mall_id}/{rule.rule_id}",
    )
    row = await conn.fetchrow(
        f"""INSERT INTO earning_rules (mall_id, rule_id, version, name, tier_code, tenant_id,
                                       sources, spend_unit_fen, points_per_unit,
                                       min_amount_fen, priority, starts_at, ends_at,
                                       recorded_at)
            SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5, $6, $7, $8, $9, $10,
                   $11, $12, coalesce($13, now())
              FROM earning_rules WHERE mall_id = $1 AND rule_id = $2
            RETURNING {_COLUMNS}""",
        rule.mall_id,
        rule.rule_id,
        rule.name,
        rule.tier_code,
        rule.tenant_id,
        sorted(rule.sources),
        rule.spend_unit_fen,
        rule.points_per_unit,
        rule.min_amount_fen,
        rule.priority,
        rule.starts_at,
        rule.ends_at,
        recorded_at,
    )
    assert row is not None
    return _rule(row)


async def rule_versions(conn: Connection, mall_ids: Sequence[str]) -> list[EarningRule]:
    """Every version of the malls' rules (a batch judges each payment by its own paid_at)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM earning_rules WHERE mall_id = ANY($1::text[])",
        sorted(set(mall_ids)),
    )
    return [_rule(r) for r in rows]


async def current_rules(
    conn: Connection, mall_id: str, *, after: str, limit: int
) -> list[EarningRule]:
    """The newest version of each rule, by rule_id, after the cursor."""
    rows = await conn.fetch(
        f"""SELECT DISTINCT ON (rule_id) {_COLUMNS}
              FROM earning_rules
             WHERE mall_id = $1 AND rule_id > $2
             ORDER BY rule_id, version DESC
             LIMIT $3""",
        mall_id,
        after,
        limit,
    )
    return [_rule(r) for r in rows]
