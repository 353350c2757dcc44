"""eventbus.streams / kit.jetstream: one stream per producer, set up idempotently."""

from __future__ import annotations

from eventbus.service import Retired, retire
from eventbus.streams import STREAMS, ensure_streams
from mall_testing.plugin import Nats
from nats.js.api import ConsumerConfig, StreamConfig


async def test_every_stream_is_created_for_its_producer(jetstream: Nats) -> None:
    await ensure_streams(jetstream.js)

    infos = {str(info.config.name): info.config for info in await jetstream.js.streams_info()}
    assert sorted(infos) == sorted(STREAMS)
    for name, prefix in STREAMS.items():
        assert infos[name].subjects == [f"{prefix}.>"]
        assert infos[name].duplicate_window == 3600.0


async def test_ensuring_again_is_harmless_and_repairs_a_drifted_configuration(
    jetstream: Nats, unique_id: str
) -> None:
    await jetstream.js.add_stream(
        StreamConfig(name="POINTS", subjects=["points.>"], duplicate_window=60.0)
    )
    ack = await jetstream.js.publish(f"points.t{unique_id}.credited", b"kept")

    await ensure_streams(jetstream.js, "POINTS")
    await ensure_streams(jetstream.js, "POINTS")

    info = await jetstream.js.stream_info("POINTS")
    assert info.config.duplicate_window == 3600.0
    assert info.state.messages == 1  # updated in place, not recreated
    assert (await jetstream.js.get_msg("POINTS", ack.seq)).data == b"kept"


async def test_retired_consumers_are_deleted_and_the_rest_kept(
    jetstream: Nats, unique_id: str
) -> None:
    await ensure_streams(jetstream.js, "MEMBER")
    service = f"svc{unique_id}"
    for handler in ("old", "kept"):
        await jetstream.js.add_consumer(
            "MEMBER", ConsumerConfig(durable_name=f"{service}-{handler}", filter_subject="member.>")
        )

    await retire(jetstream.js, service, [Retired("old", "MEMBER"), Retired("never-was", "MEMBER")])
    await retire(jetstream.js, service, [Retired("old", "MEMBER")])  # the next start: gone already

    names = {c.name for c in await jetstream.js.consumers_info("MEMBER")}
    assert f"{service}-old" not in names
    assert f"{service}-kept" in names


async def test_a_service_changes_only_the_streams_it_owns(jetstream: Nats, unique_id: str) -> None:
    await jetstream.js.add_stream(
        StreamConfig(name="POINTS", subjects=["points.>"], duplicate_window=60.0)
    )

    # member reads POINTS: an existing stream is left to points, a missing one is created.
    await ensure_streams(jetstream.js, "POINTS", "COUPONS", service="member")
    assert (await jetstream.js.stream_info("POINTS")).config.duplicate_window == 60.0
    assert (await jetstream.js.stream_info("COUPONS")).config.duplicate_window == 3600.0

    await ensure_streams(jetstream.js, "POINTS", service="points")
    assert (await jetstream.js.stream_info("POINTS")).config.duplicate_window == 3600.0
