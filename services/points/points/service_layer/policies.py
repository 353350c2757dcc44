"""Set a mall's points policies: what a debit does to a balance that cannot cover it, and
when the lots of new credits expire."""

from __future__ import annotations

from kit.db import Connection
from kit.errors import InvalidInput

from points.adapters import policies
from points.domain.debt import NegativeBalance
from points.domain.expiry import ExpiryPolicy

DEFAULT = "default"


async def set_balance_policy(conn: Connection, mall_id: str, policy: str) -> NegativeBalance:
    """``allow`` (balances may go below zero) or ``debt`` (stop at zero, owe the rest); from
    the next debit on. Debts already owed are settled by credits under either policy."""
    if not mall_id:
        raise InvalidInput("missing_field", "mall_id is required")
    parsed = NegativeBalance.parse(policy)
    async with conn.transaction():
        await policies.set_negative_balance(conn, mall_id, parsed)
    return parsed


async def set_expiry_policy(conn: Connection, mall_id: str, policy: str) -> ExpiryPolicy | None:
    """``end_of_next_year`` or ``days:N`` for the lots of the mall's credits from now on;
    ``default`` goes back to the service's POINTS_EXPIRY_POLICY (returns ``None``). Lots
    already created keep their expiry."""
    if not mall_id:
        raise InvalidInput("missing_field", "mall_id is required")
    parsed = None if policy == DEFAULT else ExpiryPolicy.parse(policy)
    async with conn.transaction():
        await policies.set_expiry_policy(conn, mall_id, None if parsed is None else policy)
    return parsed
