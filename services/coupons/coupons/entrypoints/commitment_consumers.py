"""Commitment card event handlers: attributed payments count on cards, refunds stop counting."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.consumer import Delivery
from kit.db import Connection
from kit.proto import to_datetime
from mall.member.v1 import events_pb2 as member_events

from coupons.service_layer.commitment_purchases import (
    Payment,
    Refund,
    count_payments,
    refund_payments,
)

PAYMENT_ATTRIBUTED = "member.payment.attributed"
REFUND_ATTRIBUTED = "member.refund.attributed"


def _payment(d: Delivery) -> Payment:
    msg = d.decode(member_events.PaymentAttributed)
    return Payment(
        mall_id=msg.mall_id,
        member_id=msg.member_id,
        store_id=msg.store_id,
        transaction_id=msg.transaction_id,
        amount_fen=msg.amount_fen,
        paid_at=to_datetime(msg.paid_at)
        if msg.HasField("paid_at")
        else to_datetime(msg.occurred_at),
    )


async def on_payment_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """``coupons-commitment-payments``: count each payment on its payer's cards."""
    await count_payments(conn, [(_payment(d), d.context) for d in deliveries])


async def on_refund_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """``coupons-commitment-refunds``: a refunded purchase stops counting on active cards."""
    refunds = []
    for d in deliveries:
        msg = d.decode(member_events.RefundAttributed)
        refund = Refund(msg.mall_id, msg.refund_id, msg.transaction_id, msg.refund_amount_fen)
        refunds.append((refund, d.context))
    await refund_payments(conn, refunds)
