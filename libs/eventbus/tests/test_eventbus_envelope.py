"""event() fills the envelope every contract event starts with, once for all services."""

from __future__ import annotations

from datetime import UTC, datetime

from eventbus.outbox import event
from mall.points.v1 import events_pb2


def test_a_new_event_gets_an_id_its_mall_and_the_time_it_happened() -> None:
    before = datetime.now(UTC)
    out = event(
        "points.points.credited", events_pb2.PointsCredited(points=5), mall_id="m1", headers={}
    )

    msg = events_pb2.PointsCredited.FromString(out.payload)
    assert msg.event_id == out.event_id != ""
    assert msg.mall_id == out.mall_id == "m1"
    assert msg.occurred_at.ToDatetime(tzinfo=UTC) >= before
    assert msg.points == 5


def test_a_given_id_and_time_are_kept_and_ids_are_never_reused() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    msg = events_pb2.PointsCredited()
    msg.occurred_at.FromDatetime(at)

    kept = event("s", msg, mall_id="m1", event_id="e-1", headers={})
    one = event("s", events_pb2.PointsCredited(), mall_id="m1", headers={})
    two = event("s", events_pb2.PointsCredited(), mall_id="m1", headers={})

    decoded = events_pb2.PointsCredited.FromString(kept.payload)
    assert (decoded.event_id, decoded.occurred_at.ToDatetime(tzinfo=UTC)) == ("e-1", at)
    assert one.event_id != two.event_id
