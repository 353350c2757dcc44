"""kit.directory: the in-memory copy of the DIRECTORY bucket, fed by a real NATS KV watcher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import nats.js.errors
import pytest
from kit.directory import CredentialEntry, Directory
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.proto import timestamp
from mall.member.v1 import directory_pb2
from mall_testing.plugin import Nats


async def eventually(probe: Callable[[], object], expected: object) -> None:
    for _ in range(200):
        if probe() == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never became {expected!r}, last {probe()!r}")


def store(mall_id: str, store_id: str, tenant_id: str) -> tuple[str, bytes]:
    value = directory_pb2.Store(mall_id=mall_id, store_id=store_id, tenant_id=tenant_id)
    return f"store.{mall_id}.{store_id}", value.SerializeToString()


def credential(c: directory_pb2.Credential) -> tuple[str, bytes]:
    return f"credential.{c.mall_id}.{c.credential_id}", c.SerializeToString()


async def test_the_copy_replays_the_bucket_then_follows_updates_and_deletes(
    jetstream: Nats,
) -> None:
    kv = await open_bucket(jetstream.js, DIRECTORY_BUCKET)
    pos = directory_pb2.Credential(
        mall_id="m1", credential_id="cred-pos", tenant_id="coffee", secret_hash="scrypt$pos"
    )
    gate = directory_pb2.Credential(
        mall_id="m1", credential_id="cred-gate", car_park_id="p1", secret_hash="scrypt$gate"
    )
    for key, value in (
        ("mall.m1", directory_pb2.Mall(mall_id="m1", appid="wx1").SerializeToString()),
        store("m1", "s1", "coffee"),
        store("m2", "s1", "tea"),  # same store id in another mall
        credential(pos),
        credential(gate),
    ):
        await kv.put(key, value)

    directory = Directory()
    component = directory.mirrored(jetstream.js)
    assert not directory.ready  # refuses work until the bucket is replayed
    stop = asyncio.Event()
    task = asyncio.create_task(component(stop))
    try:
        await eventually(lambda: directory.ready, True)
        assert directory.store_tenant("m1", "s1") == "coffee"
        assert directory.store_tenant("m2", "s1") == "tea"
        assert directory.store_tenant("m1", "s2") is None
        assert directory.credential("cred-pos") == CredentialEntry(
            "m1", "cred-pos", "coffee", "", "scrypt$pos", revoked=False
        )
        assert directory.credential("cred-gate") == CredentialEntry(
            "m1", "cred-gate", "", "p1", "scrypt$gate", revoked=False
        )

        # Changes after the replay: a store changes hands, a credential is revoked.
        await kv.put(*store("m1", "s1", "tea"))
        pos.revoked_at.CopyFrom(timestamp(datetime.now(UTC)))
        await kv.put(*credential(pos))
        await eventually(lambda: directory.store_tenant("m1", "s1"), "tea")
        await eventually(lambda: getattr(directory.credential("cred-pos"), "revoked", None), True)

        # Deleted and purged entries leave the copy; the others stay.
        await kv.delete(store("m1", "s1", "")[0])
        await kv.purge(credential(gate)[0])
        await eventually(lambda: directory.store_tenant("m1", "s1"), None)
        await eventually(lambda: directory.credential("cred-gate"), None)
        assert directory.store_tenant("m2", "s1") == "tea"
        assert directory.credential("cred-pos") is not None
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_a_copy_filled_by_hand_is_ready_at_once() -> None:
    directory = Directory()
    directory.apply(*store("m1", "s1", "coffee"))
    assert directory.ready
    assert directory.store_tenant("m1", "s1") == "coffee"
    directory.apply(store("m1", "s1", "")[0], None)
    assert directory.store_tenant("m1", "s1") is None


async def test_a_reader_leaves_an_existing_bucket_to_its_writer(
    jetstream: Nats, unique_id: str
) -> None:
    bucket = f"READ{unique_id}"
    kv = await open_bucket(jetstream.js, bucket)  # one copy, as the writer made it
    await kv.put("k", b"v")

    # A reader configured for three copies opens it as it is (one server could not hold three:
    # asking would fail, as it would for a reader NATS forbids to change the bucket).
    read = await open_bucket(jetstream.js, bucket, replicas=3, owned=False)
    assert (await read.get("k")).value == b"v"
    assert (await jetstream.js.stream_info(f"KV_{bucket}")).config.num_replicas == 1
    with pytest.raises(nats.js.errors.Error):
        await open_bucket(jetstream.js, bucket, replicas=3)  # the writer does ask
