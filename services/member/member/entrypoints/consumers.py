"""Event handlers: translate deliveries into service-layer calls."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.consumer import Delivery
from kit.db import Connection
from kit.proto import to_datetime
from mall.payments.v1 import events_pb2 as payments

from member.domain.joining import AuthorizationChange
from member.domain.model import CapturedPayment, CapturedRefund
from member.service_layer.joining import authorizations_changed
from member.service_layer.payments import attribute_payments
from member.service_layer.refunds import attribute_refunds

PAYMENT_CAPTURED = "payments.payment.captured"
PAYMENT_REFUNDED = "payments.payment.refunded"
AUTHORIZATION_CHANGED = "payments.authorization.changed"


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


def _refunded(d: Delivery) -> CapturedRefund:
    msg = d.decode(payments.PaymentRefunded)
    return CapturedRefund(
        event_id=d.event_id,
        refund_id=msg.refund_id,
        transaction_id=msg.transaction_id,
        appid=msg.appid,
        openid=msg.openid,
        refund_amount_fen=msg.refund_amount_fen,
        refunded_at=to_datetime(msg.refunded_at),
    )


async def on_payment_refunded(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    await attribute_refunds(conn, [(_refunded(d), d.context) for d in deliveries])


def _authorization(d: Delivery) -> AuthorizationChange:
    msg = d.decode(payments.AuthorizationChanged)
    return AuthorizationChange(
        event_id=d.event_id,
        appid=msg.appid,
        openid=msg.openid,
        auth_type=payments.AuthType.Name(msg.auth_type),
        changed_at=to_datetime(msg.changed_at),
    )


async def on_authorization_changed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    await authorizations_changed(conn, [(_authorization(d), d.context) for d in deliveries])
