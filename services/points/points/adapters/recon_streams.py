"""The durable event record, read for reconciliation: the PAYMENTS stream (what the gateway
acknowledged to WeChat Pay) and the MEMBER stream (what member attributed).

Each subject is read with an ephemeral ordered consumer from a start time (DeliverPolicy
BY_START_TIME, no acks, nothing left behind on the server) up to the last message the stream
held when the read began; the events are filtered by mall here (the subjects carry no mall).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from google.protobuf.message import Message
from kit.errors import Unavailable
from mall.member.v1 import events_pb2 as member_events
from mall.payments.v1 import events_pb2 as payment_events
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from points.domain.recon import Payment, Refund

CAPTURED = ("PAYMENTS", "payments.payment.captured")
REFUNDED = ("PAYMENTS", "payments.payment.refunded")
ATTRIBUTED = ("MEMBER", "member.payment.attributed")
REFUND_ATTRIBUTED = ("MEMBER", "member.refund.attributed")
#: How long one read waits for the next message before it gives up on the stream.
READ_TIMEOUT_S = 5.0

M = TypeVar("M", bound=Message)


@dataclass
class StreamRecord:
    """What the gateway and member recorded for one mall since a start time."""

    captured: dict[str, Payment] = field(default_factory=dict)
    captured_refunds: dict[str, Refund] = field(default_factory=dict)
    attributed: dict[str, Payment] = field(default_factory=dict)
    attributed_refunds: dict[str, Refund] = field(default_factory=dict)
    #: The mall's WeChat appids seen in its events (to pick its payments from the platform's).
    appids: set[str] = field(default_factory=set)


async def read_subject(
    js: JetStreamContext,
    stream_subject: tuple[str, str],
    since: datetime,
    message: Callable[[], M],
) -> list[tuple[datetime, M]]:
    """Every message of a subject stored from ``since`` (by stream time), decoded."""
    stream, subject = stream_subject
    info = await js.stream_info(stream, subjects_filter=subject)
    if not (info.state.subjects or {}).get(subject):
        return []
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since),
    )
    out: list[tuple[datetime, M]] = []
    try:
        # The server pushes at once: by now some (or all) messages may be on their way, so
        # "nothing to read" is nothing pending and nothing delivered; otherwise read until
        # the message that had none behind it when it was sent.
        consumer = await sub.consumer_info()
        if not consumer.num_pending and not (
            consumer.delivered and consumer.delivered.consumer_seq
        ):
            return out
        while True:
            try:
                msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            except NatsTimeout:
                raise Unavailable(
                    "stream_read_incomplete",
                    f"{stream} {subject}: no message within {READ_TIMEOUT_S} s; try again",
                ) from None
            meta = msg.metadata
            decoded = message()
            decoded.ParseFromString(msg.data)
            out.append((meta.timestamp, decoded))
            if not meta.num_pending:
                break
    finally:
        await sub.unsubscribe()
    return out


async def read_streams(js: JetStreamContext, mall_id: str, since: datetime) -> StreamRecord:
    """The mall's events since ``since``. The gateway's mall_id is a hint that may be empty
    (its directory copy did not know the shop yet): such an event counts for this mall when
    member attributed its payment here or it was paid under one of the mall's appids."""
    record = StreamRecord()
    unplaced: list[Payment] = []
    for at, c in await read_subject(js, CAPTURED, since, payment_events.PaymentCaptured):
        if c.mall_id in (mall_id, ""):
            payment = Payment(c.transaction_id, c.amount_fen, at, appid=c.appid)
            if c.mall_id:
                record.captured.setdefault(c.transaction_id, payment)
                record.appids.add(c.appid)
            else:
                unplaced.append(payment)
    unplaced_refunds: list[Refund] = []
    for at, r in await read_subject(js, REFUNDED, since, payment_events.PaymentRefunded):
        if r.mall_id in (mall_id, ""):
            refund = Refund(r.refund_id, r.transaction_id, r.refund_amount_fen, at)
            if r.mall_id:
                record.captured_refunds.setdefault(r.refund_id, refund)
            else:
                unplaced_refunds.append(refund)
    for at, a in await read_subject(js, ATTRIBUTED, since, member_events.PaymentAttributed):
        if a.mall_id == mall_id:
            record.attributed.setdefault(
                a.transaction_id,
                Payment(
                    a.transaction_id,
                    a.amount_fen,
                    at,
                    member_id=a.member_id,
                    wechat=bool(a.openid),  # points reports only what has an openid
                    appid=a.appid,
                ),
            )
            if a.appid:
                record.appids.add(a.appid)
    for at, f in await read_subject(js, REFUND_ATTRIBUTED, since, member_events.RefundAttributed):
        if f.mall_id == mall_id:
            record.attributed_refunds.setdefault(
                f.refund_id,
                Refund(
                    f.refund_id, f.transaction_id, f.refund_amount_fen, at, wechat=bool(f.openid)
                ),
            )
    for p in unplaced:
        if p.transaction_id in record.attributed or p.appid in record.appids:
            record.captured.setdefault(p.transaction_id, p)
    for refund in unplaced_refunds:
        if refund.transaction_id in record.captured or refund.transaction_id in record.attributed:
            record.captured_refunds.setdefault(refund.refund_id, refund)
    return record
