"""SQL for a member's own payments (the gateway's e-receipts). Every query is scoped by
mall_id and member_id: a member never reads another member's payment."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from kit.db import Connection

from member.domain.model import PaymentSource


@dataclass(frozen=True)
class MemberPayment:
    transaction_id: str
    tenant_id: str
    store_id: str
    amount_fen: int
    refunded_fen: int
    source: PaymentSource
    paid_at: datetime


async def member_payments(
    conn: Connection,
    mall_id: str,
    member_id: str,
    *,
    transaction_id: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[MemberPayment]:
    """The member's payments, newest first, after the (paid_at, transaction_id) cursor; with
    ``transaction_id``, only that one (if it is the member's)."""
    rows = await conn.fetch(
        """SELECT p.transaction_id, p.tenant_id, p.store_id, p.amount_fen, p.source, p.paid_at,
                  coalesce((SELECT sum(r.refund_amount_fen) FROM refunds r
                             WHERE r.mall_id = p.mall_id AND r.transaction_id = p.transaction_id
                               AND r.state = 'attributed'), 0) AS refunded_fen
             FROM payments p
            WHERE p.mall_id = $1 AND p.member_id = $2
              AND ($3::text IS NULL OR p.transaction_id = $3)
              AND ($4::timestamptz IS NULL OR (p.paid_at, p.transaction_id) < ($4, $5::text))
            ORDER BY p.paid_at DESC, p.transaction_id DESC
            LIMIT $6""",
        mall_id,
        uuid.UUID(member_id),
        transaction_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [
        MemberPayment(
            r["transaction_id"],
            r["tenant_id"],
            r["store_id"],
            r["amount_fen"],
            int(r["refunded_fen"]),
            PaymentSource(r["source"]),
            r["paid_at"],
        )
        for r in rows
    ]
