"""Event handlers: translate deliveries into service-layer calls."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.consumer import Delivery
from kit.db import Connection
from kit.proto import to_datetime
from mall.member.v1 import events_pb2 as member_events

from points.domain.model import AttributedPayment
from points.service_layer.credits import credit_payments

PAYMENT_ATTRIBUTED = "member.payment.attributed"


def _attributed(d: Delivery) -> AttributedPayment:
    msg = d.decode(member_events.PaymentAttributed)
    return AttributedPayment(
        event_id=d.event_id,
        mall_id=msg.mall_id,
        member_id=msg.member_id,
        transaction_id=msg.transaction_id,
        tenant_id=msg.tenant_id,
        amount_fen=msg.amount_fen,
        paid_at=to_datetime(msg.paid_at),
        appid=msg.appid,
        openid=msg.openid,
    )


async def on_payment_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    await credit_payments(conn, [(_attributed(d), d.context) for d in deliveries])
