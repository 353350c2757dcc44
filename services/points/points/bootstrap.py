"""The points service's composition root: the one place that wires everything."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import eventbus
from eventbus.service import Subscription, assemble
from kit.cli import Roles, Service
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc

from points.config import Settings
from points.entrypoints.consumers import PAYMENT_ATTRIBUTED, on_payment_attributed
from points.entrypoints.grpc_api import PointsServicer

NAME = "points"
MIGRATIONS = [eventbus.MIGRATIONS, (NAME, Path(__file__).parent / "migrations")]


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    async with assemble(
        NAME,
        settings,
        streams=["MEMBER", "POINTS"],
        subscriptions=[
            Subscription("payment-attributed", "MEMBER", PAYMENT_ATTRIBUTED, on_payment_attributed)
        ],
        servicers=lambda pool: [
            (points_service_pb2_grpc.add_PointsServiceServicer_to_server, PointsServicer(pool)),
        ],
        descriptor=points_service_pb2.DESCRIPTOR,
    ) as roles:
        yield roles


SERVICE = Service(NAME, Settings, bootstrap, MIGRATIONS)
