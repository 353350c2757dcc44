"""Event handlers: translate deliveries into service-layer calls."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.consumer import Delivery
from kit.db import Connection
from kit.proto import to_datetime
from mall.payments.v1 import events_pb2 as payments

from member.domain.model import CapturedPayment
from member.service_layer.payments import attribute_payments

PAYMENT_CAPTURED = "payments.payment.captured"


def _captured(d: Delivery) -> CapturedPayment:
    msg = d.decode(payments.PaymentCaptured)
    return CapturedPayment(
        event_id=d.event_id,
        transaction_id=msg.transaction_id,
        appid=msg.appid,
        mchid=msg.mchid,
        shop_number=msg.shop_number,
        openid=msg.openid,
        amount_fen=msg.amount_fen,
        paid_at=to_datetime(msg.paid_at),
    )


async def on_payment_captured(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    await attribute_payments(conn, [(_captured(d), d.context) for d in deliveries])
