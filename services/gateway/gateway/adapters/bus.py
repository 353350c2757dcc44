"""Publish what WeChat Pay reported onto the PAYMENTS stream."""

from __future__ import annotations

from datetime import UTC, datetime

import nats.errors
import structlog
from kit import context
from kit.errors import Unavailable
from kit.proto import timestamp
from mall.payments.v1 import events_pb2
from nats.aio.client import Client

from gateway.domain.notifications import PaymentNotice

log = structlog.get_logger(__name__)

PAYMENT_CAPTURED = "payments.payment.captured"


class PaymentsPublisher:
    def __init__(self, nc: Client, *, timeout_s: float) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._timeout_s = timeout_s

    def ready(self) -> bool:
        return bool(self._nc.is_connected)

    async def payment_captured(self, notice: PaymentNotice) -> bool:
        """Publish and wait for the stream's ack; False if it was a duplicate.

        ``Nats-Msg-Id`` is the platform's transaction id, so the many retries of one
        notification collapse into one message within the stream's de-duplication window
        (and into one effect in the consumers' inboxes after it).
        """
        msg = events_pb2.PaymentCaptured(
            event_id=notice.transaction_id,
            transaction_id=notice.transaction_id,
            appid=notice.appid,
            mchid=notice.mchid,
            merchant_name=notice.merchant_name,
            shop_name=notice.shop_name,
            shop_number=notice.shop_number,
            openid=notice.openid,
            amount_fen=notice.amount_fen,
            paid_at=timestamp(notice.paid_at),
            commit_tag=notice.commit_tag,
            received_at=timestamp(datetime.now(UTC)),
            notification_id=notice.notification_id,
        )
        try:
            ack = await self._js.publish(
                PAYMENT_CAPTURED,
                msg.SerializeToString(),
                timeout=self._timeout_s,
                headers={"Nats-Msg-Id": notice.transaction_id, **context.current()},
            )
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("publish_failed", error=repr(exc))
            raise Unavailable("publish_failed", "event bus unavailable; retry later") from None
        if ack.duplicate:
            log.info("payment_duplicate", transaction_id=notice.transaction_id)
        return not ack.duplicate
