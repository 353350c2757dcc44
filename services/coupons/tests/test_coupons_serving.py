"""The coupons process serves two gRPC services; health and reflection know both."""

from __future__ import annotations

import asyncio

import grpc
from coupons.bootstrap import MIGRATIONS, bootstrap
from coupons.commitment_settings import CommitmentSettings
from coupons.config import Settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from kit.cli import serving
from kit.migrations import migrate
from mall_testing.plugin import FreshDatabase

SERVICES = ("mall.coupons.v1.CouponsService", "mall.coupons.v1.CommitmentService")


async def test_health_and_reflection_list_both_services(
    fresh_database: FreshDatabase, nats_url: str
) -> None:
    url = await fresh_database("coupons_serving")
    await migrate(url, MIGRATIONS)
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    commitments = CommitmentSettings(commitment_sweep_interval_s=3600, wechatpay_api_base="")
    async with bootstrap(settings, commitments) as roles, serving(roles, ("serve",)) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in SERVICES:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

        def listed() -> list[str]:  # the reflection client is synchronous
            with grpc.insecure_channel(target) as channel:
                return list(ProtoReflectionDescriptorDatabase(channel).get_services())

        assert set(SERVICES) <= set(await asyncio.to_thread(listed))
