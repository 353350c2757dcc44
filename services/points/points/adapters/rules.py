"""SQL for earning rules: append a version, load a batch's rules, page the current ones."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from kit.db import Connection

from points.domain.rules import EarningRule, Rounding

_COLUMNS = """mall_id, rule_id, version, name, tier_code, tenant_id, sources, spend_unit_fen,
              points_per_unit, min_amount_fen, priority, starts_at, ends_at, recorded_at,
              multiplier_percent, bonus_points, budget_points, daily_cap_points, rounding,
              tenant_category"""


def _rule(row: Any) -> EarningRule:
    values = dict(row)
    values["sources"] = frozenset(values["sources"])
    values["rounding"] = Rounding(values["rounding"])
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
                                       recorded_at, multiplier_percent, bonus_points,
                                       budget_points, daily_cap_points, rounding,
                                       tenant_category)
            SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5, $6, $7, $8, $9, $10,
                   $11, $12, coalesce($13, now()), $14, $15, $16, $17, $18, $19
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
        rule.multiplier_percent,
        rule.bonus_points,
        rule.budget_points,
        rule.daily_cap_points,
        rule.rounding.value,
        rule.tenant_category,
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


async def lock_budgets(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """Lock the campaigns' budget rows (opening missing ones) in key order, for this
    transaction; return what each budget gave so far. Taken after the accounts' locks."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    rows = await conn.fetch(
        """INSERT INTO rule_budgets (mall_id, rule_id)
           SELECT m, r FROM unnest($1::text[], $2::text[]) AS t(m, r) ORDER BY m, r
           ON CONFLICT (mall_id, rule_id) DO UPDATE SET mall_id = EXCLUDED.mall_id
           RETURNING mall_id, rule_id, spent_points""",
        [k[0] for k in ordered],
        [k[1] for k in ordered],
    )
    return {(r["mall_id"], r["rule_id"]): r["spent_points"] for r in rows}


async def spend_budgets(conn: Connection, spent: dict[tuple[str, str], int]) -> None:
    """Add what a batch granted to the (locked) budget rows."""
    keys = [k for k, v in spent.items() if v > 0]
    if not keys:
        return
    await conn.execute(
        """UPDATE rule_budgets b SET spent_points = b.spent_points + t.n
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(m, r, n)
            WHERE b.mall_id = t.m AND b.rule_id = t.r""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [spent[k] for k in keys],
    )


async def earned_on_days(
    conn: Connection, keys: Sequence[tuple[str, str, date]]
) -> dict[tuple[str, str, date], int]:
    """Points credited per (mall_id, member_id, mall day); callers hold the accounts' locks."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    rows = await conn.fetch(
        # Summed per key by index (LATERAL): a join is planned for a guessed batch size and,
        # cached while the ledger is small, keeps walking all of its credits as it grows.
        """SELECT t.m, t.u, t.d, e.points
             FROM unnest($1::text[], $2::uuid[], $3::date[]) AS t(m, u, d)
            CROSS JOIN LATERAL (
                  SELECT coalesce(sum(l.points), 0) AS points FROM ledger l
                   WHERE l.mall_id = t.m AND l.member_id = t.u AND l.mall_day = t.d
                     AND l.kind = 'credit') AS e""",
        [k[0] for k in ordered],
        [uuid.UUID(k[1]) for k in ordered],
        [k[2] for k in ordered],
    )
    return {(r["m"], str(r["u"]), r["d"]): int(r["points"]) for r in rows}
