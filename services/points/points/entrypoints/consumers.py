"""Event handlers: translate deliveries into service-layer calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from eventbus.consumer import Delivery
from kit.db import Connection
from kit.proto import to_datetime
from mall.common.v1 import common_pb2
from mall.member.v1 import events_pb2 as member_events

from points.domain.expiry import DEFAULT_EXPIRY, ExpiryPolicy
from points.domain.model import AttributedPayment, AttributedRefund
from points.service_layer import merges
from points.service_layer.credits import credit_payments
from points.service_layer.reversals import reverse_refunds

PAYMENT_ATTRIBUTED = "member.payment.attributed"
REFUND_ATTRIBUTED = "member.refund.attributed"


def _attributed(d: Delivery) -> AttributedPayment:
    msg = d.decode(member_events.PaymentAttributed)
    return AttributedPayment(
        event_id=d.event_id,
        mall_id=msg.mall_id,
        member_id=msg.member_id,
        transaction_id=msg.transaction_id,
        tenant_id=msg.tenant_id,
        tenant_category=msg.tenant_category,
        amount_fen=msg.amount_fen,
        paid_at=to_datetime(msg.paid_at),
        appid=msg.appid,
        openid=msg.openid,
        tier_code=msg.tier_code,
        source=_source_name(msg.source),
    )


def _source_name(value: int) -> str:
    """The PaymentSource name, or "" when unset or unknown to this build."""
    try:
        return common_pb2.PaymentSource.Name(value) if value else ""  # type: ignore[arg-type]
    except ValueError:
        return ""


Handler = Callable[[Connection, Sequence[Delivery]], Awaitable[None]]


def payment_attributed(expiry: ExpiryPolicy) -> Handler:
    """The payment handler crediting lots that expire by the mall's ``expiry`` policy."""

    async def handle(conn: Connection, deliveries: Sequence[Delivery]) -> None:
        payments = await merges.redirect(conn, [_attributed(d) for d in deliveries])
        contexts = [d.context for d in deliveries]
        await credit_payments(conn, list(zip(payments, contexts, strict=True)), None, expiry)
        await merges.sweep(conn, [(p.mall_id, p.member_id) for p in payments])

    return handle


on_payment_attributed = payment_attributed(DEFAULT_EXPIRY)


def _refund(d: Delivery) -> AttributedRefund:
    msg = d.decode(member_events.RefundAttributed)
    return AttributedRefund(
        event_id=d.event_id,
        mall_id=msg.mall_id,
        member_id=msg.member_id,
        transaction_id=msg.transaction_id,
        refund_id=msg.refund_id,
        refund_amount_fen=msg.refund_amount_fen,
        pay_amount_fen=msg.pay_amount_fen,
        appid=msg.appid,
        openid=msg.openid,
    )


async def on_refund_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    refunds = await merges.redirect(conn, [_refund(d) for d in deliveries])
    await reverse_refunds(conn, list(zip(refunds, [d.context for d in deliveries], strict=True)))
