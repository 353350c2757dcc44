"""The in-process live hub and the event decoding, without servers."""

from __future__ import annotations

import asyncio

from gateway.adapters.live import CREDITED, REVERSED, decode
from gateway.service_layer.live import Event, LiveHub, Subscription
from mall.points.v1 import events_pb2


async def _event(sub: Subscription) -> Event | None:
    item = await sub.next()
    return None if item is None else item[1]


async def test_events_reach_only_the_members_streams() -> None:
    hub = LiveHub()
    with hub.subscribe("m1", "a") as a, hub.subscribe("m1", "b") as b:
        assert hub.publish("m1", "a", {"n": 1}) == 1
        assert hub.publish("m2", "a", {"n": 2}) == 0
        assert await _event(a) == {"n": 1}
        assert b.offer(("x-1", {"n": 3}))
        assert await _event(b) == {"n": 3}
    assert hub.streams() == 0


async def test_a_slow_stream_is_dropped_without_blocking_the_dispatcher() -> None:
    hub = LiveHub(queue_limit=2)
    slow = hub.subscribe("m1", "a")
    fast = hub.subscribe("m1", "a")

    assert hub.publish("m1", "a", {"n": 1}) == 2
    assert await _event(fast) == {"n": 1}
    assert hub.publish("m1", "a", {"n": 2}) == 2
    assert await _event(fast) == {"n": 2}
    assert hub.publish("m1", "a", {"n": 3}) == 1  # slow is full: dropped
    assert hub.dropped == 1
    assert slow.closed
    assert await slow.next() is None
    assert hub.streams("m1", "a") == 1
    assert await _event(fast) == {"n": 3}


def test_a_reconnect_resumes_after_the_last_event_it_got() -> None:
    hub = LiveHub()
    with hub.subscribe("m1", "a"):
        ready_id = hub.now_id
        hub.publish("m1", "a", {"n": 1})
        first_id = hub.now_id
    hub.publish("m1", "a", {"n": 2})  # while away
    hub.publish("m1", "b", {"n": 99})  # someone else's
    hub.publish("m1", "a", {"n": 3})

    with hub.subscribe("m1", "a"):
        assert [e for _, e in hub.resume("m1", "a", first_id) or []] == [{"n": 2}, {"n": 3}]
        assert [e for _, e in hub.resume("m1", "a", ready_id) or []] == [
            {"n": 1},
            {"n": 2},
            {"n": 3},
        ]
        assert hub.resume("m1", "a", hub.now_id) == []


def test_a_resume_that_could_miss_events_says_so() -> None:
    clock = [0.0]
    hub = LiveHub(replay_limit=2, resume_window_s=60, clock=lambda: clock[0])
    with hub.subscribe("m1", "a"):
        start = hub.now_id
        for n in range(3):
            hub.publish("m1", "a", {"n": n})  # the first falls out of the buffer
        assert hub.resume("m1", "a", start) is None
        assert hub.resume("m1", "a", "otherprocess-1") is None  # another replica's id
        assert hub.resume("m1", "a", "garbage") is None
        assert hub.resume("m1", "a", f"{start.split('-')[0]}-999") is None  # from the future
        last = hub.now_id
    assert hub.resume("m1", "b", last) is None  # never had a stream here
    clock[0] = 61.0
    hub.publish("m1", "a", {"n": 3})  # away past the window: not kept
    with hub.subscribe("m1", "a"):
        assert hub.resume("m1", "a", last) is None


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
