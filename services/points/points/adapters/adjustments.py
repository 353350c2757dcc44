"""SQL for manual adjustments: the audit row and its 'adjustment' ledger entry."""

from __future__ import annotations

import uuid

from kit.db import Connection

from points.adapters.repository import LedgerEntry
from points.domain.redemption import Adjustment

_ENTRY = """l.entry_id, l.kind, l.points, l.balance_after, l.transaction_id, l.reference,
            l.description, l.created_at"""


async def find(
    conn: Connection, mall_id: str, request_id: str
) -> tuple[Adjustment, LedgerEntry] | None:
    """The adjustment made for ``request_id`` before, with its ledger entry."""
    row = await conn.fetchrow(
        f"""SELECT a.member_id, a.points AS adjusted, a.reason, a.operator, {_ENTRY}
              FROM adjustments a
              JOIN ledger l ON l.mall_id = a.mall_id AND l.entry_id = a.entry_id
             WHERE a.mall_id = $1 AND a.request_id = $2""",
        mall_id,
        request_id,
    )
    if row is None:
        return None
    done = Adjustment(
        mall_id, str(row["member_id"]), row["adjusted"], row["reason"], row["operator"], request_id
    )
    entry = LedgerEntry(**{k: row[k] for k in LedgerEntry.__dataclass_fields__})
    return done, entry


async def record(
    conn: Connection, adjustment: Adjustment, balance_after: int
) -> LedgerEntry | None:
    """The entry, the audit row and the new balance; None if the request_id is taken."""
    row = await conn.fetchrow(
        """WITH claim AS (
               INSERT INTO adjustments (mall_id, request_id, member_id, points, reason,
                                        operator, entry_id)
               VALUES ($1, $2, $3, $4, $5, $6, nextval(pg_get_serial_sequence('ledger',
                                                                               'entry_id')))
               ON CONFLICT (mall_id, request_id) DO NOTHING
               RETURNING entry_id),
           entry AS (
               INSERT INTO ledger (mall_id, entry_id, member_id, kind, points, balance_after,
                                   reference, description)
               OVERRIDING SYSTEM VALUE
               SELECT $1, claim.entry_id, $3, 'adjustment', $4, $7, $6, $5 FROM claim
               RETURNING *),
           account AS (
               UPDATE accounts SET balance = $7, updated_at = now()
                 FROM entry WHERE accounts.mall_id = $1 AND accounts.member_id = $3)
           SELECT entry_id, kind, points, balance_after, transaction_id, reference,
                  description, created_at FROM entry""",
        adjustment.mall_id,
        adjustment.request_id,
        uuid.UUID(adjustment.member_id),
        adjustment.points,
        adjustment.reason,
        adjustment.operator,
        balance_after,
    )
    return LedgerEntry(**dict(row)) if row else None
