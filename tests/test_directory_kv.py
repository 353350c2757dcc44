"""The directory reaches other services through the DIRECTORY bucket, never by asking member."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from gateway.adapters.directory import Directory, ShopRef
from kit.directory import Directory as CallerDirectory
from kit.kvmirror import DIRECTORY_BUCKET, KvMirror
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc
from mall_testing.demo import DemoMall, seed
from mall_testing.plugin import Nats

from tests.conftest import Suite


async def eventually(probe: Callable[[], object], expected: object) -> None:
    for _ in range(200):
        if probe() == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never became {expected!r}, last {probe()!r}")


async def test_directory_changes_reach_a_mirror_started_before_and_after(
    suite: Suite, jetstream: Nats
) -> None:
    early = Directory()
    early_mirror = KvMirror(jetstream.js, DIRECTORY_BUCKET, early.apply)
    stop = asyncio.Event()
    task = asyncio.create_task(early_mirror.run(stop))
    late_task: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(early_mirror.ready.wait(), 10)
        mall = await seed(suite.member_grpc, DemoMall.unique())
        first = mall.stores[0]
        expected = ShopRef(mall.mall_id, first.tenant_id, first.store_id)
        await eventually(lambda: early.shop(mall.appid, first.shop_number), expected)

        # A store moves to another shop number: the old one stops resolving.
        async with grpc.aio.insecure_channel(suite.member_grpc) as channel:
            await member_service_pb2_grpc.DirectoryServiceStub(channel).CreateStore(
                member_service_pb2.CreateStoreRequest(
                    mall_id=mall.mall_id,
                    tenant_id=first.tenant_id,
                    store_id=first.store_id,
                    name="moved",
                    mchid=mall.mchid,
                    shop_number="SHOP-MOVED",
                )
            )
        await eventually(lambda: early.shop(mall.appid, "SHOP-MOVED"), expected)
        assert early.shop(mall.appid, first.shop_number) is None

        # A process started later gets the whole current directory at once.
        late = Directory()
        late_mirror = KvMirror(jetstream.js, DIRECTORY_BUCKET, late.apply)
        late_task = asyncio.create_task(late_mirror.run(stop))
        await asyncio.wait_for(late_mirror.ready.wait(), 10)
        assert late.shop(mall.appid, "SHOP-MOVED") == expected
        assert late.shop(mall.appid, mall.stores[1].shop_number) == ShopRef(
            mall.mall_id, mall.stores[1].tenant_id, mall.stores[1].store_id
        )
    finally:
        stop.set()
        await task
        if late_task is not None:
            await late_task


async def test_credentials_and_their_revocation_reach_a_mirror(
    suite: Suite, jetstream: Nats
) -> None:
    """Tenant POS credentials (hashes only) are checked locally by coupons and parking: the
    bucket carries them, and a revocation reaches the copy as well."""
    copy = CallerDirectory()
    stop = asyncio.Event()
    task = asyncio.create_task(copy.mirrored(jetstream.js)(stop))
    try:
        mall = await seed(suite.member_grpc, DemoMall.unique())
        tenant_id = mall.stores[0].tenant_id
        async with grpc.aio.insecure_channel(suite.member_grpc) as channel:
            directory = member_service_pb2_grpc.DirectoryServiceStub(channel)
            issued = await directory.IssueCredential(
                member_service_pb2.IssueCredentialRequest(
                    mall_id=mall.mall_id, tenant_id=tenant_id, label="POS 1"
                )
            )
            credential_id = issued.credential.credential_id

            def seen() -> tuple[str, str, bool] | None:
                entry = copy.credential(credential_id)
                return (entry.mall_id, entry.tenant_id, entry.revoked) if entry else None

            await eventually(seen, (mall.mall_id, tenant_id, False))
            entry = copy.credential(credential_id)
            assert entry is not None
            assert entry.secret_hash  # a hash to check against, not the secret
            assert issued.secret not in entry.secret_hash

            await directory.RevokeCredential(
                member_service_pb2.RevokeCredentialRequest(
                    mall_id=mall.mall_id, credential_id=credential_id
                )
            )
            await eventually(seen, (mall.mall_id, tenant_id, True))
    finally:
        stop.set()
        await task
