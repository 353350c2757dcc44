"""SQL for giving back a used coupon after a partial refund took its order below the coupon's
threshold (a full refund gives it back whatever the threshold: ``coupons.return_used_on_orders``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kit.db import Connection

from coupons.adapters.coupons import Changed


async def return_used_below_threshold(
    conn: Connection, keys: Sequence[tuple[str, str]], at: datetime
) -> list[Changed]:
    """Make usable again (when still valid) the coupons with a threshold used on these
    (mall, transaction) orders whose remaining amount — the order amount the POS reported
    with the coupon, less every refund recorded for the payment — is now below the threshold."""
    if not keys:
        return []
    rows = await conn.fetch(
        """WITH refunded AS (
               SELECT mall_id, transaction_id, sum(refund_amount_fen) AS fen FROM refunds
                WHERE (mall_id, transaction_id) IN (
                      SELECT * FROM unnest($1::text[], $2::text[]))
                GROUP BY mall_id, transaction_id)
           UPDATE coupons c SET status = 'available', redeemed_at = NULL,
                  redeemed_store_id = '', use_request_id = NULL, order_amount_fen = 0,
                  discount_fen = 0, order_transaction_id = ''
             FROM refunded r, stocks s
            WHERE c.mall_id = r.mall_id AND c.order_transaction_id = r.transaction_id
              AND c.order_transaction_id <> '' AND c.status = 'used' AND c.valid_until > $3
              AND s.mall_id = c.mall_id AND s.stock_id = c.stock_id AND s.threshold_fen > 0
              AND c.order_amount_fen - r.fen < s.threshold_fen
           RETURNING c.mall_id, c.coupon_id, c.stock_id, c.member_id::text, r.transaction_id""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        at,
    )
    return [Changed(*r) for r in rows]
