"""The points service's composition root: the one place that wires everything."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import eventbus
from eventbus.consumer import Consumer
from eventbus.ops import dead_letter_commands
from eventbus.relay import OutboxRelay
from eventbus.streams import ensure_streams
from kit.cli import Roles, Service
from kit.db import open_pool, ping
from kit.grpc_server import GrpcServer
from kit.jetstream import connect
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc

from points.config import Settings
from points.entrypoints.consumers import PAYMENT_ATTRIBUTED, on_payment_attributed
from points.entrypoints.grpc_api import PointsServicer

NAME = "points"
MIGRATIONS = [eventbus.MIGRATIONS, (NAME, Path(__file__).parent / "migrations")]


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    async with (
        open_pool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            application_name=NAME,
        ) as pool,
        connect(settings.nats_url, name=NAME) as nc,
    ):
        js = nc.jetstream()
        await ensure_streams(js, "MEMBER", "POINTS")
        consumers = [
            Consumer(
                pool,
                js,
                name=f"{NAME}-payment-attributed",
                stream="MEMBER",
                subject=PAYMENT_ATTRIBUTED,
                handler=on_payment_attributed,
                batch_size=settings.consumer_batch_size,
                ack_wait_s=settings.consumer_ack_wait_s,
            )
        ]

        async def nats_ok() -> bool:
            return bool(nc.is_connected)

        async def db_ok() -> bool:
            return await ping(pool)

        grpc = GrpcServer(
            service=NAME,
            registrations=[
                (points_service_pb2_grpc.add_PointsServiceServicer_to_server, PointsServicer(pool)),
            ],
            service_names=[
                s.full_name for s in points_service_pb2.DESCRIPTOR.services_by_name.values()
            ],
            health_checks=[db_ok, nats_ok],
            host=settings.grpc_host,
            port=settings.grpc_port,
            default_deadline_s=settings.grpc_default_deadline_s,
            grace_s=settings.shutdown_grace_s,
        )
        yield Roles(
            components={
                "serve": [grpc.run],
                "relay": [OutboxRelay(pool, js).run],
                "consume": [c.run for c in consumers],
            },
            commands=dead_letter_commands(pool, consumers),
            grpc=grpc,
        )


SERVICE = Service(NAME, Settings, bootstrap, MIGRATIONS)
