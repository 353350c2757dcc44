"""Translate member outcomes into contract events for the outbox."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from eventbus.outbox import OutgoingEvent, event
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.member.v1 import events_pb2, member_pb2

from member.domain.model import Attribution, JoinChannel, PaymentSource

PAYMENT_ATTRIBUTED = "member.payment.attributed"
MEMBER_JOINED = "member.member.joined"

_SOURCES = {
    PaymentSource.WECHAT_PAY: common_pb2.PAYMENT_SOURCE_WECHAT_PAY,
    PaymentSource.POS_CASH: common_pb2.PAYMENT_SOURCE_POS_CASH,
    PaymentSource.POS_CARD: common_pb2.PAYMENT_SOURCE_POS_CARD,
    PaymentSource.RECEIPT: common_pb2.PAYMENT_SOURCE_RECEIPT,
}
CHANNELS = {
    JoinChannel.PAYMENT: member_pb2.JOIN_CHANNEL_PAYMENT,
    JoinChannel.MINI_PROGRAM: member_pb2.JOIN_CHANNEL_MINI_PROGRAM,
    JoinChannel.POS: member_pb2.JOIN_CHANNEL_POS,
}


def payment_attributed(a: Attribution, headers: dict[str, str]) -> OutgoingEvent:
    event_id = str(uuid.uuid4())
    msg = events_pb2.PaymentAttributed(
        event_id=event_id,
        mall_id=a.store.mall_id,
        occurred_at=timestamp(datetime.now(UTC)),
        member_id=a.member.member_id,
        tier_code=a.member.tier_code,
        tenant_id=a.store.tenant_id,
        store_id=a.store.store_id,
        amount_fen=a.payment.amount_fen,
        transaction_id=a.payment.transaction_id,
        source=_SOURCES[a.source],
        paid_at=timestamp(a.payment.paid_at),
        appid=a.payment.appid,
        openid=a.payment.openid,
    )
    return event(
        PAYMENT_ATTRIBUTED, msg, mall_id=a.store.mall_id, event_id=event_id, headers=headers
    )


def member_joined(a: Attribution, channel: JoinChannel, headers: dict[str, str]) -> OutgoingEvent:
    event_id = str(uuid.uuid4())
    msg = events_pb2.MemberJoined(
        event_id=event_id,
        mall_id=a.store.mall_id,
        occurred_at=timestamp(datetime.now(UTC)),
        member_id=a.member.member_id,
        channel=CHANNELS[channel],
        tier_code=a.member.tier_code,
        transaction_id=a.payment.transaction_id,
    )
    return event(MEMBER_JOINED, msg, mall_id=a.store.mall_id, event_id=event_id, headers=headers)
