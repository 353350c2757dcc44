"""Event handlers: translate deliveries into service-layer calls (batched inbox Consumer)."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.consumer import Delivery
from kit.db import Connection
from kit.proto import to_datetime
from mall.member.v1 import events_pb2 as member_events

from coupons.domain.post_payment import Payment, Refund
from coupons.service_layer.post_payment import issue_for_payments, undo_for_refunds

PAYMENT_ATTRIBUTED = "member.payment.attributed"
REFUND_ATTRIBUTED = "member.refund.attributed"


def _payment(d: Delivery) -> Payment:
    msg = d.decode(member_events.PaymentAttributed)
    return Payment(
        mall_id=msg.mall_id,
        member_id=msg.member_id,
        transaction_id=msg.transaction_id,
        tenant_id=msg.tenant_id,
        store_id=msg.store_id,
        amount_fen=msg.amount_fen,
        paid_at=to_datetime(msg.paid_at if msg.HasField("paid_at") else msg.occurred_at),
        tier_code=msg.tier_code,
    )


def _refund(d: Delivery) -> Refund:
    msg = d.decode(member_events.RefundAttributed)
    return Refund(
        mall_id=msg.mall_id,
        refund_id=msg.refund_id,
        transaction_id=msg.transaction_id,
        refund_amount_fen=msg.refund_amount_fen,
        pay_amount_fen=msg.pay_amount_fen,
    )


async def on_payment_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    await issue_for_payments(conn, [(_payment(d), d.context) for d in deliveries])


async def on_refund_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    await undo_for_refunds(conn, [(_refund(d), d.context) for d in deliveries])
