"""SQL for accounts and the append-only ledger. Every query is scoped by mall_id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from kit.db import Connection

from points.domain.model import AttributedRefund, Credit


@dataclass(frozen=True)
class Account:
    mall_id: str
    member_id: str
    balance: int
    lifetime_earned: int
    updated_at: datetime | None
    #: Points reserved by open (HELD, unexpired) holds; not spendable.
    held: int = 0
    #: Points owed (mall policy 'debt'), settled first by the next credits.
    debt: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True)
class ExpiringPoints:
    """The open lots that expire first, together (policies often share one expiry date)."""

    points: int
    expires_at: datetime


async def next_expiring(conn: Connection, mall_id: str, member_id: str) -> ExpiringPoints | None:
    row = await conn.fetchrow(
        """SELECT expires_at, sum(points_remaining) AS points FROM lots
            WHERE mall_id = $1 AND member_id = $2 AND points_remaining > 0
            GROUP BY expires_at ORDER BY expires_at LIMIT 1""",
        mall_id,
        uuid.UUID(member_id),
    )
    return ExpiringPoints(int(row["points"]), row["expires_at"]) if row else None


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


async def lock_accounts(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """Open missing accounts and lock all of them for this transaction; return balances.

    Rows are locked in key order so two batches touching the same members cannot deadlock.
    """
    ordered = sorted(set(keys))
    rows = await conn.fetch(
        """INSERT INTO accounts (mall_id, member_id)
           SELECT m, u FROM unnest($1::text[], $2::uuid[]) AS t(m, u) ORDER BY m, u
           ON CONFLICT (mall_id, member_id) DO UPDATE SET mall_id = EXCLUDED.mall_id
           RETURNING mall_id, member_id, balance""",
        [k[0] for k in ordered],
        [uuid.UUID(k[1]) for k in ordered],
    )
    return {(r["mall_id"], str(r["member_id"])): r["balance"] for r in rows}


async def credited_transactions(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which (mall_id, transaction_id) already have their credit entry."""
    rows = await conn.fetch(
        # One index probe per payment (LATERAL … LIMIT 1): a plain join is planned for a
        # guessed batch size and, cached while the ledger is small, keeps reading every
        # credit in it as it grows.
        """SELECT t.m AS mall_id, t.x AS transaction_id
             FROM unnest($1::text[], $2::text[]) AS t(m, x)
            CROSS JOIN LATERAL (
                  SELECT 1 FROM ledger l
                   WHERE l.mall_id = t.m AND l.transaction_id = t.x AND l.kind = 'credit'
                   LIMIT 1) AS credited""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["mall_id"], r["transaction_id"]) for r in rows}


async def append_credits(conn: Connection, credits: Sequence[Credit]) -> None:
    """Append credit entries (each followed by its 'debt_settlement' entry when it settled
    debt) and set the accounts' balances and debts, in two statements."""
    # 0-point credits are entries too: the ledger records every payment's credit decision,
    # which is what makes a redelivered sub-yuan payment recognisable.
    entries = [c for c in credits if c.applied]
    if not entries:
        return
    rows: list[tuple[str, uuid.UUID, str, int, int, str, str, str, date | None]] = []
    for c in entries:
        p = c.payment
        member = uuid.UUID(p.member_id)
        rows.append(
            (
                p.mall_id,
                member,
                "credit",
                c.points,
                c.balance_after + c.settled,
                p.transaction_id,
                f"payment {p.transaction_id} at {p.tenant_id}",
                c.rule_version,
                c.mall_day,
            )
        )
        if c.settled:
            rows.append(
                (
                    p.mall_id,
                    member,
                    "debt_settlement",
                    -c.settled,
                    c.balance_after,
                    p.transaction_id,
                    f"debt settled by payment {p.transaction_id}",
                    "",
                    None,
                )
            )
    # Entry ids follow the rows' order, so each member's entries read in order.
    await conn.execute(
        """INSERT INTO ledger (mall_id, member_id, kind, points, balance_after, transaction_id,
                               description, rule_version, mall_day)
           SELECT m, u, k, p, b, x, d, r, y
             FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::text[], $7::text[], $8::text[], $9::date[])
                  WITH ORDINALITY AS t(m, u, k, p, b, x, d, r, y, n)
            ORDER BY n""",
        *(list(column) for column in zip(*rows, strict=True)),
    )
    closing: dict[tuple[str, str], tuple[int, int, int]] = {}
    for c in entries:
        key = (c.payment.mall_id, c.payment.member_id)
        _, earned, settled = closing.get(key, (0, 0, 0))
        closing[key] = (c.balance_after, earned + c.points, settled + c.settled)
    await conn.execute(
        """UPDATE accounts a SET balance = t.b, lifetime_earned = a.lifetime_earned + t.e,
                                 debt = a.debt - t.s, updated_at = now()
             FROM unnest($1::text[], $2::uuid[], $3::bigint[], $4::bigint[], $5::bigint[])
                  AS t(m, u, b, e, s)
            WHERE a.mall_id = t.m AND a.member_id = t.u""",
        [k[0] for k in closing],
        [uuid.UUID(k[1]) for k in closing],
        [v[0] for v in closing.values()],
        [v[1] for v in closing.values()],
        [v[2] for v in closing.values()],
    )


async def get_account(conn: Connection, mall_id: str, member_id: str) -> Account:
    """The account with its open holds (an expired hold is not held, touched or not)."""
    row = await conn.fetchrow(
        """SELECT balance, lifetime_earned, updated_at, debt,
                  (SELECT coalesce(sum(points), 0) FROM holds h
                    WHERE h.mall_id = a.mall_id AND h.member_id = a.member_id
                      AND h.state = 'HELD' AND h.expires_at > now()) AS held
             FROM accounts a
            WHERE mall_id = $1 AND member_id = $2""",
        mall_id,
        uuid.UUID(member_id),
    )
    if row is None:
        return Account(mall_id, member_id, 0, 0, None)
    return Account(
        mall_id,
        member_id,
        row["balance"],
        row["lifetime_earned"],
        row["updated_at"],
        held=int(row["held"]),
        debt=row["debt"],
    )


async def list_ledger(
    conn: Connection,
    mall_id: str,
    member_id: str,
    *,
    before: int | None,
    limit: int,
    transaction_id: str | None = None,
) -> list[LedgerEntry]:
    """Newest first, paged by entry id (a stable cursor while entries keep arriving); with
    ``transaction_id``, only that payment's entries of this member."""
    rows = await conn.fetch(
        """SELECT entry_id, kind, points, balance_after, transaction_id, reference,
                  description, created_at
             FROM ledger
            WHERE mall_id = $1 AND member_id = $2 AND ($3::bigint IS NULL OR entry_id < $3)
              AND ($5::text IS NULL OR transaction_id = $5)
            ORDER BY entry_id DESC LIMIT $4""",
        mall_id,
        uuid.UUID(member_id),
        before,
        limit,
        transaction_id,
    )
    return [LedgerEntry(**dict(r)) for r in rows]


async def credited_points(conn: Connection, mall_id: str, transaction_id: str) -> int | None:
    """Points the payment's credit entry gave, or None if it has none (yet)."""
    value: int | None = await conn.fetchval(
        """SELECT points FROM ledger
            WHERE mall_id = $1 AND transaction_id = $2 AND kind = 'credit'""",
        mall_id,
        transaction_id,
    )
    return value


async def reversal_totals(conn: Connection, mall_id: str, transaction_id: str) -> tuple[int, int]:
    """(fen refunded, points reversed) by the payment's earlier refunds."""
    row = await conn.fetchrow(
        """SELECT coalesce(sum(refund_amount_fen), 0) AS fen, coalesce(sum(points), 0) AS points
             FROM refund_reversals WHERE mall_id = $1 AND transaction_id = $2""",
        mall_id,
        transaction_id,
    )
    assert row is not None
    return int(row["fen"]), int(row["points"])


async def record_reversal(conn: Connection, refund: AttributedRefund, points: int) -> bool:
    """Record what a refund reversed; False if this refund was handled already."""
    inserted = await conn.fetchval(
        """INSERT INTO refund_reversals (mall_id, refund_id, transaction_id, member_id,
                                         refund_amount_fen, pay_amount_fen, points)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (mall_id, refund_id) DO NOTHING RETURNING true""",
        refund.mall_id,
        refund.refund_id,
        refund.transaction_id,
        uuid.UUID(refund.member_id),
        refund.refund_amount_fen,
        refund.pay_amount_fen,
        points,
    )
    return bool(inserted)


async def append_reversal(
    conn: Connection, refund: AttributedRefund, points: int, balance_after: int, debt: int = 0
) -> None:
    """A reversal entry (negative points) and the account's new balance; ``debt``: points
    the refund took as debt instead (mall policy 'debt'), said in the description."""
    await conn.execute(
        """WITH entry AS (
               INSERT INTO ledger (mall_id, member_id, kind, points, balance_after,
                                   transaction_id, reference, description)
               VALUES ($1, $2, 'reversal', $3, $4, $5, $6, $7)
               RETURNING entry_id)
           UPDATE accounts SET balance = $4, updated_at = now()
             FROM entry WHERE mall_id = $1 AND member_id = $2""",
        refund.mall_id,
        uuid.UUID(refund.member_id),
        -points,
        balance_after,
        refund.transaction_id,
        refund.refund_id,
        f"refund {refund.refund_id} of payment {refund.transaction_id}"
        + (f" ({debt} points owed)" if debt else ""),
    )
