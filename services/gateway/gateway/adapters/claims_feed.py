"""What the claim path learns from coupons' events (core NATS, best effort, per process):
``coupons.stock.exhausted`` flags a stock sold out in ``SoldOutMemory``, and
``coupons.coupon.claimed`` records who holds a coupon of which stock (so a holder's retry is
never refused from memory), and ``member.tier.changed`` drops the member's kept tier
(``forget``). Missing an event only costs an RPC, or a tier kept a few seconds longer: coupons
and member stay the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats.errors
import structlog
from google.protobuf.message import DecodeError
from mall.coupons.v1 import events_pb2
from mall.member.v1 import events_pb2 as member_events
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.service_layer.claims import SoldOutMemory

log = structlog.get_logger(__name__)

EXHAUSTED = "coupons.stock.exhausted"
CLAIMED = "coupons.coupon.claimed"
TIER_CHANGED = "member.tier.changed"


def _keep(mall_id: str, member_id: str) -> None:
    return None


class ClaimsFeed:
    def __init__(
        self, nc: Client, memory: SoldOutMemory, forget: Callable[[str, str], None] = _keep
    ) -> None:
        self._nc = nc
        self._memory = memory
        self._forget = forget
        self.subscribed = asyncio.Event()

    async def _on_message(self, msg: Msg) -> None:
        try:
            if msg.subject == TIER_CHANGED:
                changed = member_events.TierChanged.FromString(msg.data)
                self._forget(changed.mall_id, changed.member_id)
            elif msg.subject == EXHAUSTED:
                exhausted = events_pb2.StockExhausted.FromString(msg.data)
                self._memory.exhausted(exhausted.mall_id, exhausted.stock_id)
            else:
                claimed = events_pb2.CouponClaimed.FromString(msg.data)
                self._memory.holds(claimed.mall_id, claimed.stock_id, claimed.member_id)
        except DecodeError:
            log.warning("coupons_event_undecodable", subject=msg.subject)

    async def run(self, stop: asyncio.Event) -> None:
        """Component: listen until asked to stop."""
        subjects = (EXHAUSTED, CLAIMED, TIER_CHANGED)
        subs = [await self._nc.subscribe(s, cb=self._on_message) for s in subjects]
        self.subscribed.set()
        try:
            await stop.wait()
        finally:
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
