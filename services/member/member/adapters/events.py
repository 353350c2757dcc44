"""Translate member outcomes into contract events for the outbox."""

from __future__ import annotations

from eventbus.outbox import OutgoingEvent, event
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.member.v1 import directory_pb2, events_pb2, member_pb2

from member.adapters.repository import MallRow
from member.domain.model import (
    Attribution,
    CapturedRefund,
    JoinChannel,
    PaymentSource,
    RecordedPayment,
)
from member.domain.pos import ReportedPayment

PAYMENT_ATTRIBUTED = "member.payment.attributed"
REFUND_ATTRIBUTED = "member.refund.attributed"
MEMBER_JOINED = "member.member.joined"
MALL_UPSERTED = "member.directory.mall_upserted"
TENANT_UPSERTED = "member.directory.tenant_upserted"
STORE_UPSERTED = "member.directory.store_upserted"
CAR_PARK_UPSERTED = "member.directory.car_park_upserted"

_SOURCES = {
    PaymentSource.WECHAT_PAY: common_pb2.PAYMENT_SOURCE_WECHAT_PAY,
    PaymentSource.POS_CASH: common_pb2.PAYMENT_SOURCE_POS_CASH,
    PaymentSource.POS_CARD: common_pb2.PAYMENT_SOURCE_POS_CARD,
    PaymentSource.POS_OTHER: common_pb2.PAYMENT_SOURCE_POS_OTHER,
    PaymentSource.RECEIPT: common_pb2.PAYMENT_SOURCE_RECEIPT,
}
CHANNELS = {
    JoinChannel.PAYMENT: member_pb2.JOIN_CHANNEL_PAYMENT,
    JoinChannel.MINI_PROGRAM: member_pb2.JOIN_CHANNEL_MINI_PROGRAM,
    JoinChannel.POS: member_pb2.JOIN_CHANNEL_POS,
}


def payment_attributed(a: Attribution, headers: dict[str, str]) -> OutgoingEvent:
    msg = events_pb2.PaymentAttributed(
        member_id=a.member.member_id,
        tier_code=a.member.tier_code,
        tenant_id=a.store.tenant_id,
        tenant_category=a.store.category,
        store_id=a.store.store_id,
        amount_fen=a.payment.amount_fen,
        transaction_id=a.payment.transaction_id,
        source=_SOURCES[a.source],
        paid_at=timestamp(a.payment.paid_at),
        appid=a.payment.appid,
        openid=a.payment.openid,
        receipt_no=a.payment.receipt_no if isinstance(a.payment, ReportedPayment) else "",
    )
    return event(PAYMENT_ATTRIBUTED, msg, mall_id=a.store.mall_id, headers=headers)


def member_joined(a: Attribution, channel: JoinChannel, headers: dict[str, str]) -> OutgoingEvent:
    msg = events_pb2.MemberJoined(
        member_id=a.member.member_id,
        channel=CHANNELS[channel],
        tier_code=a.member.tier_code,
        transaction_id=a.payment.transaction_id,
    )
    return event(MEMBER_JOINED, msg, mall_id=a.store.mall_id, headers=headers)


def mall_message(m: MallRow) -> directory_pb2.Mall:
    mall = directory_pb2.Mall(
        mall_id=m.mall_id,
        name=m.name,
        appid=m.appid,
        brand_id=m.brand_id,
        mchid=m.mchid,
        time_zone=m.time_zone,
    )
    if m.created_at:
        mall.created_at.CopyFrom(timestamp(m.created_at))
    return mall


def mall_upserted(row: MallRow) -> OutgoingEvent:
    mall = mall_message(row)
    msg = events_pb2.MallUpserted(
        mall=mall,
    )
    return event(MALL_UPSERTED, msg, mall_id=mall.mall_id)


def tenant_upserted(*, mall_id: str, tenant_id: str, name: str, category: str) -> OutgoingEvent:
    tenant = directory_pb2.Tenant(
        mall_id=mall_id, tenant_id=tenant_id, name=name, category=category
    )
    msg = events_pb2.TenantUpserted(
        tenant=tenant,
    )
    return event(TENANT_UPSERTED, msg, mall_id=tenant.mall_id)


def store_upserted(
    *,
    mall_id: str,
    tenant_id: str,
    store_id: str,
    name: str,
    mchid: str,
    sub_mchid: str,
    shop_number: str,
) -> OutgoingEvent:
    store = directory_pb2.Store(
        mall_id=mall_id,
        tenant_id=tenant_id,
        store_id=store_id,
        name=name,
        mchid=mchid,
        sub_mchid=sub_mchid,
        shop_number=shop_number,
    )
    msg = events_pb2.StoreUpserted(
        store=store,
    )
    return event(STORE_UPSERTED, msg, mall_id=store.mall_id)


def car_park_upserted(car_park: directory_pb2.CarPark) -> OutgoingEvent:
    msg = events_pb2.CarParkUpserted(car_park=car_park)
    return event(CAR_PARK_UPSERTED, msg, mall_id=car_park.mall_id)


def refund_attributed(
    payment: RecordedPayment, refund: CapturedRefund, headers: dict[str, str]
) -> OutgoingEvent:
    msg = events_pb2.RefundAttributed(
        member_id=payment.member_id,
        tenant_id=payment.tenant_id,
        store_id=payment.store_id,
        transaction_id=payment.transaction_id,
        refund_id=refund.refund_id,
        refund_amount_fen=refund.refund_amount_fen,
        pay_amount_fen=payment.amount_fen,
        refunded_at=timestamp(refund.refunded_at),
        appid=refund.appid,
        openid=refund.openid,
        source=_SOURCES[payment.source],
    )
    return event(REFUND_ATTRIBUTED, msg, mall_id=payment.mall_id, headers=headers)
