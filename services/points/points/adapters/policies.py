"""SQL for the malls' points policies and the members' debts (see ``points.domain.debt``)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from kit.db import Connection

from points.domain.debt import NegativeBalance


async def set_negative_balance(conn: Connection, mall_id: str, policy: NegativeBalance) -> None:
    await conn.execute(
        """INSERT INTO mall_policies (mall_id, negative_balance) VALUES ($1, $2)
           ON CONFLICT (mall_id) DO UPDATE
                 SET negative_balance = EXCLUDED.negative_balance, updated_at = now()""",
        mall_id,
        policy.value,
    )


async def negative_balance(conn: Connection, mall_ids: Sequence[str]) -> dict[str, NegativeBalance]:
    """Each mall's policy; ``allow`` for a mall that never set one."""
    rows = await conn.fetch(
        "SELECT mall_id, negative_balance FROM mall_policies WHERE mall_id = ANY($1::text[])",
        sorted(set(mall_ids)),
    )
    found = {r["mall_id"]: NegativeBalance(r["negative_balance"]) for r in rows}
    return {m: found.get(m, NegativeBalance.ALLOW) for m in mall_ids}


async def set_expiry_policy(conn: Connection, mall_id: str, policy: str | None) -> None:
    """Store the mall's expiry policy text (``None``: the service's default)."""
    await conn.execute(
        """INSERT INTO mall_policies (mall_id, expiry_policy) VALUES ($1, $2)
           ON CONFLICT (mall_id) DO UPDATE
                 SET expiry_policy = EXCLUDED.expiry_policy, updated_at = now()""",
        mall_id,
        policy,
    )


async def expiry_policies(conn: Connection, mall_ids: Sequence[str]) -> dict[str, str]:
    """The expiry policy text of each of the malls that set one (others use the default)."""
    rows = await conn.fetch(
        """SELECT mall_id, expiry_policy FROM mall_policies
            WHERE mall_id = ANY($1::text[]) AND expiry_policy IS NOT NULL""",
        sorted(set(mall_ids)),
    )
    return {r["mall_id"]: r["expiry_policy"] for r in rows}


async def debts(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Debts of (locked) accounts; 0 for an account without one."""
    ordered = sorted(set(keys))
    rows = await conn.fetch(
        """SELECT a.mall_id, a.member_id, a.debt
             FROM accounts a JOIN unnest($1::text[], $2::uuid[]) AS t(m, u)
               ON a.mall_id = t.m AND a.member_id = t.u
            WHERE a.debt > 0""",
        [k[0] for k in ordered],
        [uuid.UUID(k[1]) for k in ordered],
    )
    found = {(r["mall_id"], str(r["member_id"])): int(r["debt"]) for r in rows}
    return {k: found.get(k, 0) for k in ordered}


async def add_debts(conn: Connection, changes: Mapping[tuple[str, str], int]) -> None:
    """Add (or with a negative change, settle) debt on locked accounts."""
    keys = [k for k, v in changes.items() if v]
    if not keys:
        return
    await conn.execute(
        """UPDATE accounts a SET debt = a.debt + t.d, updated_at = now()
             FROM unnest($1::text[], $2::uuid[], $3::bigint[]) AS t(m, u, d)
            WHERE a.mall_id = t.m AND a.member_id = t.u""",
        [k[0] for k in keys],
        [uuid.UUID(k[1]) for k in keys],
        [changes[k] for k in keys],
    )
