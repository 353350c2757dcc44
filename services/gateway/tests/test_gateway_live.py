"""The in-process live hub and the event decoding, without servers."""

from __future__ import annotations

import asyncio

from gateway.adapters.live import CREDITED, REVERSED, decode
from gateway.service_layer.live import LiveHub
from mall.points.v1 import events_pb2


async def test_events_reach_only_the_members_streams() -> None:
    hub = LiveHub()
    with hub.subscribe("m1", "a") as a, hub.subscribe("m1", "b") as b:
        assert hub.publish("m1", "a", {"n": 1}) == 1
        assert hub.publish("m2", "a", {"n": 2}) == 0
        assert await a.next() == {"n": 1}
        assert b.offer({"n": 3})
        assert await b.next() == {"n": 3}
    assert hub.streams() == 0


async def test_a_slow_stream_is_dropped_without_blocking_the_dispatcher() -> None:
    hub = LiveHub(queue_limit=2)
    slow = hub.subscribe("m1", "a")
    fast = hub.subscribe("m1", "a")

    assert hub.publish("m1", "a", {"n": 1}) == 2
    assert await fast.next() == {"n": 1}
    assert hub.publish("m1", "a", {"n": 2}) == 2
    assert await fast.next() == {"n": 2}
    assert hub.publish("m1", "a", {"n": 3}) == 1  # slow is full: dropped
    assert hub.dropped == 1
    assert slow.closed
    assert await slow.next() is None
    assert hub.streams("m1", "a") == 1
    assert await fast.next() == {"n": 3}


async def test_closing_all_ends_waiting_streams() -> None:
    hub = LiveHub()
    sub = hub.subscribe("m1", "a")
    waiting = asyncio.create_task(sub.next())
    await asyncio.sleep(0)

    hub.close_all()

    assert await waiting is None
    assert hub.streams() == 0


def test_credits_and_reversals_decode_to_what_the_shopper_sees() -> None:
    credited = events_pb2.PointsCredited(
        mall_id="m1", member_id="a", transaction_id="t1", points=12, balance_after=40
    )
    assert decode(CREDITED, credited.SerializeToString()) == (
        "m1",
        "a",
        {"type": "points.credited", "points": 12, "balance": 40, "transaction_id": "t1"},
    )
    zero = events_pb2.PointsCredited(mall_id="m1", member_id="a", points=0)
    assert decode(CREDITED, zero.SerializeToString()) is None
    reversed_ = events_pb2.PointsReversed(
        mall_id="m1", member_id="a", transaction_id="t1", refund_id="r1", points=5, balance_after=35
    )
    assert decode(REVERSED, reversed_.SerializeToString()) == (
        "m1",
        "a",
        {
            "type": "points.reversed",
            "points": -5,
            "balance": 35,
            "transaction_id": "t1",
            "refund_id": "r1",
        },
    )
    assert decode("points.points.redeemed", b"") is None
