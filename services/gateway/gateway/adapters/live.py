"""The points events for live push: one core-NATS subscription per gateway process.

Not a durable consumer: live push is best effort and the ledger is the truth, so a process
that was down or disconnected simply misses events (its clients re-read ``/v1/me/points``
when they reconnect). Each message is decoded and handed to the in-process ``LiveHub``.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
import structlog
from google.protobuf.message import DecodeError
from mall.points.v1 import events_pb2
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.service_layer.live import Event, LiveHub

log = structlog.get_logger(__name__)

SUBJECTS = "points.points.>"
CREDITED = "points.points.credited"
REVERSED = "points.points.reversed"


def decode(subject: str, data: bytes) -> tuple[str, str, Event] | None:
    """(mall_id, member_id, event) for a message a shopper should see; None otherwise."""
    if subject == CREDITED:
        credited = events_pb2.PointsCredited.FromString(data)
        if credited.points <= 0:
            return None  # nothing to celebrate
        return (
            credited.mall_id,
            credited.member_id,
            {
                "type": "points.credited",
                "points": credited.points,
                "balance": credited.balance_after,
                "transaction_id": credited.transaction_id,
            },
        )
    if subject == REVERSED:
        reversed_ = events_pb2.PointsReversed.FromString(data)
        return (
            reversed_.mall_id,
            reversed_.member_id,
            {
                "type": "points.reversed",
                "points": -reversed_.points,
                "balance": reversed_.balance_after,
                "transaction_id": reversed_.transaction_id,
                "refund_id": reversed_.refund_id,
            },
        )
    return None


class PointsFeed:
    def __init__(self, nc: Client, hub: LiveHub) -> None:
        self._nc = nc
        self._hub = hub
        self.subscribed = asyncio.Event()

    async def _on_message(self, msg: Msg) -> None:
        try:
            decoded = decode(msg.subject, msg.data)
        except DecodeError:
            log.warning("live_event_undecodable", subject=msg.subject)
            return
        if decoded is not None:
            self._hub.publish(*decoded)

    async def run(self, stop: asyncio.Event) -> None:
        """Component: dispatch until asked to stop, then end every open stream."""
        sub = await self._nc.subscribe(SUBJECTS, cb=self._on_message)
        self.subscribed.set()
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            self._hub.close_all()
