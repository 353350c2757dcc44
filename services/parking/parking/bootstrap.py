"""The parking service's composition root.

Its gRPC contract is served (every RPC answers UNIMPLEMENTED until its issue lands), with
health, reflection, its outbox relay and its own PARKING stream, so that `make run` and the
deploy bring up the whole suite from day one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import eventbus
from eventbus.service import assemble
from kit.cli import Roles, Service
from mall.parking.v1 import parking_service_pb2, parking_service_pb2_grpc

from parking.config import Settings

NAME = "parking"
MIGRATIONS = [eventbus.MIGRATIONS]


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    async with assemble(
        NAME,
        settings,
        streams=["PARKING"],
        servicers=lambda pool: [
            (
                parking_service_pb2_grpc.add_ParkingServiceServicer_to_server,
                parking_service_pb2_grpc.ParkingServiceServicer(),
            )
        ],
        descriptor=parking_service_pb2.DESCRIPTOR,
    ) as roles:
        yield roles


SERVICE = Service(NAME, Settings, bootstrap, MIGRATIONS)
