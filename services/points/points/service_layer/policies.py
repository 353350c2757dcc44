"""Set a mall's points policies (today: what a debit does to a balance that cannot cover it)."""

from __future__ import annotations

from kit.db import Connection
from kit.errors import InvalidInput

from points.adapters import policies
from points.domain.debt import NegativeBalance


async def set_balance_policy(conn: Connection, mall_id: str, policy: str) -> NegativeBalance:
    """``allow`` (balances may go below zero) or ``debt`` (stop at zero, owe the rest); from
    the next debit on. Debts already owed are settled by credits under either policy."""
    if not mall_id:
        raise InvalidInput("missing_field", "mall_id is required")
    parsed = NegativeBalance.parse(policy)
    async with conn.transaction():
        await policies.set_negative_balance(conn, mall_id, parsed)
    return parsed
