"""The member-scoped events: live push, and forgetting cached cards. One core-NATS
subscription per subject family per gateway process.

``points.points.credited`` / ``reversed`` are pushed to the member's SSE streams. Every event
that changes what a member's card shows (points, tier, coupons, parking) first invalidates
that member's cached card (``changed``), *then* is pushed: a client that re-reads the card
on an SSE event sees the change (see ``gateway.service_layer.card``).

Not a durable consumer: live push is best effort and the ledger is the truth, so a process
that was down or disconnected simply misses events (its clients re-read ``/v1/me/points``
when they reconnect). Each message is decoded and handed to the in-process ``LiveHub``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats.errors
import structlog
from google.protobuf.message import DecodeError, Message
from mall.coupons.v1 import events_pb2 as coupons_events
from mall.member.v1 import events_pb2 as member_events
from mall.parking.v1 import events_pb2 as parking_events
from mall.points.v1 import events_pb2
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.adapters.notices import SUBJECTS as NOTICE_SUBJECTS
from gateway.adapters.notices import decode_notice, merge_of
from gateway.service_layer.live import Event, LiveHub

log = structlog.get_logger(__name__)

SUBJECTS = "points.points.>"
CREDITED = "points.points.credited"
REVERSED = "points.points.reversed"
#: Subjects whose events change a member's card, and their payloads (each has mall_id and
#: member_id). Subscribed with wildcards; a subject not listed here is ignored.
CARD_CHANGES: dict[str, type[Message]] = {
    CREDITED: events_pb2.PointsCredited,
    REVERSED: events_pb2.PointsReversed,
    "points.points.redeemed": events_pb2.PointsRedeemed,
    "points.points.expired": events_pb2.PointsExpired,
    "points.hold.released": events_pb2.PointsHoldReleased,
    "member.member.joined": member_events.MemberJoined,
    "member.tier.changed": member_events.TierChanged,
    "member.benefits.changed": member_events.BenefitsChanged,
    "member.guide.bound": member_events.GuideBound,
    "coupons.coupon.claimed": coupons_events.CouponClaimed,
    "coupons.coupon.redeemed": coupons_events.CouponRedeemed,
    "coupons.coupon.revoked": coupons_events.CouponRevoked,
    "coupons.coupon.expired": coupons_events.CouponExpired,
    "coupons.coupon.returned": coupons_events.CouponReturned,
    "parking.session.started": parking_events.SessionStarted,
    "parking.session.settled": parking_events.SessionSettled,
}
FEED_SUBJECTS = (
    "points.points.>",
    "points.hold.>",
    "member.member.joined",
    "member.tier.changed",
    "coupons.coupon.>",
    "parking.session.>",
    *NOTICE_SUBJECTS,
)
Changed = Callable[[str, str], None]
#: ``merged(mall_id, merged_member_id, survivor_member_id)``
Merged = Callable[[str, str, str], None]


def member_of(subject: str, data: bytes) -> tuple[str, str] | None:
    """(mall_id, member_id) whose card an event changes; None when it changes none."""
    kind = CARD_CHANGES.get(subject)
    if kind is None:
        return None
    event = kind.FromString(data)
    mall_id, member_id = getattr(event, "mall_id", ""), getattr(event, "member_id", "")
    return (mall_id, member_id) if mall_id and member_id else None


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
    return decode_notice(subject, data)  # benefits, guides, parking, coupons (adapters.notices)


def _ignore(mall_id: str, member_id: str) -> None:
    return None


class PointsFeed:
    def __init__(
        self,
        nc: Client,
        hub: LiveHub,
        changed: Changed = _ignore,
        merged: Merged | None = None,
    ) -> None:
        self._nc = nc
        self._merged = merged
        self._hub = hub
        self._changed = changed
        self.subscribed = asyncio.Event()

    async def _on_message(self, msg: Msg) -> None:
        try:
            member = member_of(msg.subject, msg.data)
            decoded = decode(msg.subject, msg.data)
            merge = merge_of(msg.subject, msg.data)
        except DecodeError:
            log.warning("live_event_undecodable", subject=msg.subject)
            return
        if merge is not None:  # sessions of the merged member read as the survivor's
            if self._merged is not None:
                self._merged(*merge)
            self._changed(merge[0], merge[1])
            self._changed(merge[0], merge[2])
        if member is not None:
            self._changed(*member)  # before the push: see the module docstring
        if decoded is not None:
            self._hub.publish(*decoded)

    async def run(self, stop: asyncio.Event) -> None:
        """Component: dispatch until asked to stop, then end every open stream."""
        subs = [await self._nc.subscribe(s, cb=self._on_message) for s in FEED_SUBJECTS]
        self.subscribed.set()
        try:
            await stop.wait()
        finally:
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            self._hub.close_all()
