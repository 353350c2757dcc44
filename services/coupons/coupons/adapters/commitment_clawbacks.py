"""SQL for the clawback queue (``commitment_clawbacks``): the pay-score deductions of failed
commitment cards.

A row is written in the transaction that fails the card, so it is an outbox for the platform
call. Claiming is one statement: due rows are picked ``FOR UPDATE SKIP LOCKED`` and given a
lease (``next_attempt_at`` moves past the call's timeout) and a new ``attempts`` value; the
claim commits before the HTTP call. An outcome is saved only if ``attempts`` still equals
the claim's, so a worker whose lease ran out cannot overwrite a newer outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kit.db import Connection

#: ``pending`` → ``collected`` (the platform deducted) or ``refused`` (ops must act).
PENDING, COLLECTED, REFUSED = "pending", "collected", "refused"


@dataclass(frozen=True)
class Clawback:
    mall_id: str
    card_id: str
    member_id: str
    appid: str
    openid: str
    amount_fen: int
    window_start: datetime
    window_end: datetime
    out_order_no: str
    status: str
    attempts: int
    last_error_code: str
    last_error: str
    platform_order: str
    created_at: datetime
    collected_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "mall_id": self.mall_id,
            "card_id": self.card_id,
            "member_id": self.member_id,
            "amount_fen": self.amount_fen,
            "out_order_no": self.out_order_no,
            "status": self.status,
            "attempts": self.attempts,
            "last_error_code": self.last_error_code,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "collected_at": self.collected_at.isoformat() if self.collected_at else None,
        }


def _clawback(row: Any) -> Clawback:
    return Clawback(
        row["mall_id"],
        str(row["card_id"]),
        row["member_id"],
        row["appid"],
        row["openid"],
        row["amount_fen"],
        row["window_start"],
        row["window_end"],
        row["out_order_no"],
        row["status"],
        row["attempts"],
        row["last_error_code"],
        row["last_error"],
        row["platform_order"],
        row["created_at"],
        row["collected_at"],
    )


def out_order_no(card_id: str) -> str:
    """The deduction's order number at the platform: one per card, so a retried call (or a
    call whose answer was lost) can never deduct twice. 32 characters, [0-9a-f]."""
    return uuid.UUID(card_id).hex


async def queue(
    conn: Connection,
    mall_id: str,
    card_id: str,
    member_id: str,
    appid: str,
    openid: str,
    amount_fen: int,
    window: tuple[datetime, datetime],
) -> None:
    await conn.execute(
        """INSERT INTO commitment_clawbacks
               (mall_id, card_id, member_id, appid, openid, amount_fen, out_order_no,
                window_start, window_end)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (mall_id, card_id) DO NOTHING""",
        mall_id,
        uuid.UUID(card_id),
        member_id,
        appid,
        openid,
        amount_fen,
        out_order_no(card_id),
        *window,
    )


async def claim_due(conn: Connection, limit: int, lease_s: float) -> list[Clawback]:
    rows = await conn.fetch(
        """WITH due AS (
             SELECT mall_id, card_id FROM commitment_clawbacks
              WHERE status = 'pending' AND next_attempt_at <= now()
              ORDER BY next_attempt_at
              LIMIT $1
                FOR UPDATE SKIP LOCKED)
           UPDATE commitment_clawbacks c
              SET attempts = c.attempts + 1,
                  next_attempt_at = now() + make_interval(secs => $2)
             FROM due WHERE c.mall_id = due.mall_id AND c.card_id = due.card_id
           RETURNING c.*""",
        limit,
        lease_s,
    )
    return [_clawback(r) for r in rows]


async def save_collected(conn: Connection, claim: Clawback, platform_order: str) -> bool:
    """Mark collected (if the claim is still the latest); False if superseded."""
    done = await conn.fetchval(
        """UPDATE commitment_clawbacks
              SET status = 'collected', collected_at = now(), platform_order = $4,
                  last_error_code = '', last_error = ''
            WHERE mall_id = $1 AND card_id = $2 AND attempts = $3 AND status = 'pending'
           RETURNING true""",
        claim.mall_id,
        uuid.UUID(claim.card_id),
        claim.attempts,
        platform_order,
    )
    return bool(done)


async def save_failure(
    conn: Connection,
    claim: Clawback,
    *,
    refused: bool,
    retry_in_s: float,
    code: str,
    error: str,
) -> bool:
    done = await conn.fetchval(
        """UPDATE commitment_clawbacks
              SET status = CASE WHEN $4 THEN 'refused' ELSE 'pending' END,
                  next_attempt_at = now() + make_interval(secs => $5),
                  last_error_code = $6, last_error = $7
            WHERE mall_id = $1 AND card_id = $2 AND attempts = $3 AND status = 'pending'
           RETURNING true""",
        claim.mall_id,
        uuid.UUID(claim.card_id),
        claim.attempts,
        refused,
        retry_in_s,
        code,
        error[:1000],
    )
    return bool(done)


async def get(conn: Connection, mall_id: str, card_id: str) -> Clawback | None:
    row = await conn.fetchrow(
        "SELECT * FROM commitment_clawbacks WHERE mall_id = $1 AND card_id = $2",
        mall_id,
        uuid.UUID(card_id),
    )
    return None if row is None else _clawback(row)


async def list_open(conn: Connection, limit: int = 100) -> list[Clawback]:
    """What ops look at: pending and refused clawbacks, oldest first (across malls)."""
    rows = await conn.fetch(
        """SELECT * FROM commitment_clawbacks WHERE status <> 'collected'
            ORDER BY created_at LIMIT $1""",
        limit,
    )
    return [_clawback(r) for r in rows]


async def retry_refused(conn: Connection, mall_id: str, card_id: str) -> bool:
    """Ops: send a refused clawback again (after fixing what the platform refused)."""
    done = await conn.fetchval(
        """UPDATE commitment_clawbacks SET status = 'pending', next_attempt_at = now()
            WHERE mall_id = $1 AND card_id = $2 AND status = 'refused' RETURNING true""",
        mall_id,
        uuid.UUID(card_id),
    )
    return bool(done)
