"""The coupons service's composition root.

Its gRPC contract is served (every RPC answers UNIMPLEMENTED until its issue lands), with
health, reflection, its outbox relay and its own COUPONS stream, so that `make run` and the
deploy bring up the whole suite from day one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import eventbus
from eventbus.service import assemble
from kit.cli import Roles, Service
from mall.coupons.v1 import coupons_service_pb2, coupons_service_pb2_grpc

from coupons.config import Settings

NAME = "coupons"
MIGRATIONS = [eventbus.MIGRATIONS, (NAME, Path(__file__).parent / "migrations")]


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    async with assemble(
        NAME,
        settings,
        streams=["COUPONS"],
        servicers=lambda pool: [
            (
                coupons_service_pb2_grpc.add_CouponsServiceServicer_to_server,
                coupons_service_pb2_grpc.CouponsServiceServicer(),
            )
        ],
        descriptor=coupons_service_pb2.DESCRIPTOR,
    ) as roles:
        yield roles


SERVICE = Service(NAME, Settings, bootstrap, MIGRATIONS)
