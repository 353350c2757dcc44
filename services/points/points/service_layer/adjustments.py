"""Manual adjustments by ops: signed points with a reason and the operator, once per
request_id.

An adjustment is an 'adjustment' ledger entry (description = reason, reference = operator)
plus an audit row; it moves the balance, not ``lifetime_earned`` (that counts points earned
by payments). A removal may not take held or missing points (``insufficient_points``).
"""

from __future__ import annotations

from kit.db import Connection

from points.adapters import adjustments, holds, lots, repository
from points.adapters.repository import Account, LedgerEntry
from points.domain.redemption import Adjustment, request_id_reused
from points.service_layer.redemptions import lock_account


async def adjust_points(conn: Connection, adjustment: Adjustment) -> tuple[LedgerEntry, Account]:
    """The ledger entry and the account after it; a retry returns the first entry."""
    mall_id, member_id = adjustment.mall_id, adjustment.member_id
    async with conn.transaction():
        balance, _ = await lock_account(conn, mall_id, member_id)
        before = await adjustments.find(conn, mall_id, adjustment.request_id)
        entry: LedgerEntry | None = None
        if before is None:
            held = await holds.held_points(conn, mall_id, member_id)
            adjustment.ensure_possible(balance - held)
            entry = await adjustments.record(conn, adjustment, balance + adjustment.points)
            if entry is None:  # the same request_id, concurrently, for another member
                before = await adjustments.find(conn, mall_id, adjustment.request_id)
            else:  # a removal spends lots like a redemption; an addition fills none
                await lots.consume(conn, mall_id, member_id, -adjustment.points)
        if before is not None:
            done, entry = before
            if done != adjustment:
                raise request_id_reused(adjustment.request_id)
        assert entry is not None
        account = await repository.get_account(conn, mall_id, member_id)
    return entry, account
