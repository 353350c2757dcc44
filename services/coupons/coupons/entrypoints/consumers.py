"""Event handlers: translate deliveries into service-layer calls (batched inbox Consumer)."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.consumer import Delivery
from kit.db import Connection
from kit.proto import to_datetime
from mall.member.v1 import events_pb2 as member_events
from mall.parking.v1 import events_pb2 as parking_events
from mall.parking.v1 import parking_pb2

from coupons.domain.parking import ParkingUse
from coupons.domain.post_payment import Payment, Refund
from coupons.service_layer.parking_uses import redeem_parking
from coupons.service_layer.post_payment import issue_for_payments, undo_for_refunds

PAYMENT_ATTRIBUTED = "member.payment.attributed"
REFUND_ATTRIBUTED = "member.refund.attributed"
SESSION_SETTLED = "parking.session.settled"


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


def _parking_uses(d: Delivery) -> list[tuple[ParkingUse, dict[str, str]]]:
    msg = d.decode(parking_events.SessionSettled)
    used_at = to_datetime(msg.exited_at if msg.HasField("exited_at") else msg.occurred_at)
    return [
        (
            ParkingUse(
                mall_id=msg.mall_id,
                coupon_id=b.coupon_id,
                session_id=msg.session_id,
                car_park_id=msg.car_park_id,
                member_id=msg.member_id,
                used_at=used_at,
                gross_fee_fen=msg.gross_fee_fen,
                discount_fen=b.discount_fen,
            ),
            d.context,
        )
        for b in msg.benefits
        if b.kind == parking_pb2.BENEFIT_KIND_COUPON and b.coupon_id
    ]


async def on_session_settled(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """``coupons-parking-settled``: the parking-hour coupons a settled stay used are USED."""
    await redeem_parking(conn, [u for d in deliveries for u in _parking_uses(d)])
