"""points' own side of a reconciliation: credits, refund reversals and sync state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kit.db import Connection

from points.domain.recon import Credit, Reversal, Sync


async def credits(
    conn: Connection, mall_id: str, transaction_ids: Sequence[str], start: datetime, end: datetime
) -> dict[str, list[Credit]]:
    """The credit entries of these payments, and of any payment credited in [start, end)."""
    rows = await conn.fetch(
        """SELECT transaction_id, member_id, points, created_at FROM ledger
            WHERE mall_id = $1 AND kind = 'credit'
              AND (transaction_id = ANY($2::text[]) OR (created_at >= $3 AND created_at < $4))
            ORDER BY entry_id""",
        mall_id,
        list(transaction_ids),
        start,
        end,
    )
    found: dict[str, list[Credit]] = {}
    for r in rows:
        tx = r["transaction_id"]
        found.setdefault(tx, []).append(
            Credit(tx, str(r["member_id"]), int(r["points"]), r["created_at"])
        )
    return found


async def reversals(
    conn: Connection, mall_id: str, refund_ids: Sequence[str]
) -> dict[str, Reversal]:
    rows = await conn.fetch(
        """SELECT refund_id, transaction_id, refund_amount_fen, points, created_at
             FROM refund_reversals WHERE mall_id = $1 AND refund_id = ANY($2::text[])""",
        mall_id,
        list(refund_ids),
    )
    return {
        r["refund_id"]: Reversal(
            r["refund_id"],
            r["transaction_id"],
            int(r["refund_amount_fen"]),
            int(r["points"]),
            r["created_at"],
        )
        for r in rows
    }


async def syncs(
    conn: Connection, mall_id: str, transaction_ids: Sequence[str]
) -> dict[tuple[str, str], Sync]:
    rows = await conn.fetch(
        """SELECT transaction_id, kind, state, increased_points FROM wechat_points_sync
            WHERE mall_id = $1 AND transaction_id = ANY($2::text[])""",
        mall_id,
        list(transaction_ids),
    )
    return {
        (r["transaction_id"], r["kind"]): Sync(r["state"], int(r["increased_points"])) for r in rows
    }
