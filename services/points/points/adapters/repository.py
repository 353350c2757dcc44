"""SQL for accounts and the append-only ledger. Every query is scoped by mall_id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from kit.db import Connection


@dataclass(frozen=True)
class Account:
    mall_id: str
    member_id: str
    balance: int
    lifetime_earned: int
    updated_at: datetime | None


@dataclass(frozen=True)
class LedgerEntry:
    entry_id: int
    kind: str
    points: int
    balance_after: int
    transaction_id: str | None
    reference: str
    description: str
    created_at: datetime


async def lock_account(conn: Connection, mall_id: str, member_id: str) -> int:
    """Open the account if needed and lock it for this transaction; return its balance."""
    balance: int = await conn.fetchval(
        """INSERT INTO accounts (mall_id, member_id) VALUES ($1, $2)
           ON CONFLICT (mall_id, member_id) DO UPDATE SET mall_id = EXCLUDED.mall_id
           RETURNING balance""",
        mall_id,
        uuid.UUID(member_id),
    )
    return balance


async def append_credit(
    conn: Connection,
    *,
    mall_id: str,
    member_id: str,
    points: int,
    balance_after: int,
    transaction_id: str,
    description: str,
) -> bool:
    """Append a credit entry and move the balance; False if this payment was credited already."""
    entry_id = await conn.fetchval(
        """WITH entry AS (
               INSERT INTO ledger (mall_id, member_id, kind, points, balance_after,
                                   transaction_id, description)
               VALUES ($1, $2, 'credit', $3, $4, $5, $6)
               ON CONFLICT (mall_id, transaction_id) WHERE kind = 'credit' DO NOTHING
               RETURNING entry_id)
           UPDATE accounts SET balance = $4, lifetime_earned = lifetime_earned + $3,
                               updated_at = now()
             FROM entry WHERE mall_id = $1 AND member_id = $2
           RETURNING entry.entry_id""",
        mall_id,
        uuid.UUID(member_id),
        points,
        balance_after,
        transaction_id,
        description,
    )
    return entry_id is not None


async def get_account(conn: Connection, mall_id: str, member_id: str) -> Account:
    row = await conn.fetchrow(
        """SELECT balance, lifetime_earned, updated_at FROM accounts
            WHERE mall_id = $1 AND member_id = $2""",
        mall_id,
        uuid.UUID(member_id),
    )
    if row is None:
        return Account(mall_id, member_id, 0, 0, None)
    return Account(mall_id, member_id, row["balance"], row["lifetime_earned"], row["updated_at"])


async def list_ledger(
    conn: Connection, mall_id: str, member_id: str, *, before: int | None, limit: int
) -> list[LedgerEntry]:
    """Newest first, paged by entry id (a stable cursor while entries keep arriving)."""
    rows = await conn.fetch(
        """SELECT entry_id, kind, points, balance_after, transaction_id, reference,
                  description, created_at
             FROM ledger
            WHERE mall_id = $1 AND member_id = $2 AND ($3::bigint IS NULL OR entry_id < $3)
            ORDER BY entry_id DESC LIMIT $4""",
        mall_id,
        uuid.UUID(member_id),
        before,
        limit,
    )
    return [LedgerEntry(**dict(r)) for r in rows]
