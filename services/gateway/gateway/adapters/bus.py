"""Publish what WeChat Pay reported onto the PAYMENTS stream."""

from __future__ import annotations

from datetime import UTC, datetime

import nats.errors
import structlog
from google.protobuf.message import Message
from kit import context
from kit.errors import Unavailable
from kit.proto import timestamp
from mall.payments.v1 import events_pb2
from nats.aio.client import Client

from gateway.domain.notifications import (
    AuthorizationNotice,
    AuthType,
    Notice,
    PaymentNotice,
    RefundNotice,
)

log = structlog.get_logger(__name__)

PAYMENT_CAPTURED = "payments.payment.captured"
PAYMENT_REFUNDED = "payments.payment.refunded"
AUTHORIZATION_CHANGED = "payments.authorization.changed"

_AUTH_TYPES = {
    AuthType.UNSPECIFIED: events_pb2.AUTH_TYPE_UNSPECIFIED,
    AuthType.REGISTERED: events_pb2.AUTH_TYPE_REGISTERED_MODE,
    AuthType.REGISTERED_AND_AUTHORIZED: events_pb2.AUTH_TYPE_REGISTERED_AND_AUTHORIZATION_MODE,
}


class PaymentsPublisher:
    """Each notice becomes one event, published with a ``Nats-Msg-Id`` derived from the
    platform's own id (transaction, refund, or notification id), so the many retries of one
    notification collapse into one message within the stream's de-duplication window (and
    into one effect in the consumers' inboxes after it)."""

    def __init__(self, nc: Client, *, timeout_s: float) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._timeout_s = timeout_s

    def ready(self) -> bool:
        return bool(self._nc.is_connected)

    async def publish(self, notice: Notice, *, mall_id: str = "") -> bool:
        """Publish and wait for the stream's ack; False if it was a duplicate."""
        if isinstance(notice, PaymentNotice):
            return await self.payment_captured(notice, mall_id=mall_id)
        if isinstance(notice, RefundNotice):
            return await self.payment_refunded(notice, mall_id=mall_id)
        return await self.authorization_changed(notice, mall_id=mall_id)

    async def payment_captured(self, notice: PaymentNotice, *, mall_id: str = "") -> bool:
        msg = events_pb2.PaymentCaptured(
            event_id=notice.transaction_id,
            transaction_id=notice.transaction_id,
            appid=notice.appid,
            mchid=notice.mchid,
            sub_mchid=notice.sub_mchid,
            merchant_name=notice.merchant_name,
            shop_name=notice.shop_name,
            shop_number=notice.shop_number,
            openid=notice.openid,
            amount_fen=notice.amount_fen,
            paid_at=timestamp(notice.paid_at),
            commit_tag=notice.commit_tag,
            received_at=timestamp(datetime.now(UTC)),
            mall_id=mall_id,
            notification_id=notice.notification_id,
        )
        return await self._publish(PAYMENT_CAPTURED, msg, notice.transaction_id)

    async def payment_refunded(self, notice: RefundNotice, *, mall_id: str = "") -> bool:
        msg = events_pb2.PaymentRefunded(
            event_id=notice.refund_id,
            transaction_id=notice.transaction_id,
            refund_id=notice.refund_id,
            appid=notice.appid,
            mchid=notice.mchid,
            sub_mchid=notice.sub_mchid,
            shop_number=notice.shop_number,
            openid=notice.openid,
            pay_amount_fen=notice.pay_amount_fen,
            refund_amount_fen=notice.refund_amount_fen,
            refunded_at=timestamp(notice.refunded_at),
            received_at=timestamp(datetime.now(UTC)),
            merchant_name=notice.merchant_name,
            shop_name=notice.shop_name,
            mall_id=mall_id,
            notification_id=notice.notification_id,
        )
        return await self._publish(PAYMENT_REFUNDED, msg, notice.refund_id)

    async def authorization_changed(
        self, notice: AuthorizationNotice, *, mall_id: str = ""
    ) -> bool:
        msg = events_pb2.AuthorizationChanged(
            event_id=notice.notification_id,
            appid=notice.appid,
            mchid=notice.mchid,
            openid=notice.openid,
            card_code=notice.card_code,
            auth_type=_AUTH_TYPES[notice.auth_type],
            changed_at=timestamp(notice.changed_at) if notice.changed_at else None,
            received_at=timestamp(datetime.now(UTC)),
            mall_id=mall_id,
            notification_id=notice.notification_id,
        )
        return await self._publish(AUTHORIZATION_CHANGED, msg, notice.notification_id)

    async def _publish(self, subject: str, msg: Message, msg_id: str) -> bool:
        try:
            ack = await self._js.publish(
                subject,
                msg.SerializeToString(),
                timeout=self._timeout_s,
                headers={"Nats-Msg-Id": msg_id, **context.current()},
            )
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("publish_failed", subject=subject, error=repr(exc))
            raise Unavailable("publish_failed", "event bus unavailable; retry later") from None
        if ack.duplicate:
            log.info("notification_duplicate", subject=subject, msg_id=msg_id)
        return not ack.duplicate
