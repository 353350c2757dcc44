"""The member service's composition root: the one place that wires everything."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import eventbus
from eventbus.service import Subscription, assemble
from kit.cli import Roles, Service
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc

from member.config import Settings
from member.entrypoints.consumers import PAYMENT_CAPTURED, on_payment_captured
from member.entrypoints.grpc_api import DirectoryServicer, MemberServicer

NAME = "member"
MIGRATIONS = [eventbus.MIGRATIONS, (NAME, Path(__file__).parent / "migrations")]


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    async with assemble(
        NAME,
        settings,
        streams=["PAYMENTS", "MEMBER"],
        subscriptions=[
            Subscription("payment-captured", "PAYMENTS", PAYMENT_CAPTURED, on_payment_captured)
        ],
        servicers=lambda pool: [
            (member_service_pb2_grpc.add_MemberServiceServicer_to_server, MemberServicer(pool)),
            (
                member_service_pb2_grpc.add_DirectoryServiceServicer_to_server,
                DirectoryServicer(pool),
            ),
        ],
        descriptor=member_service_pb2.DESCRIPTOR,
    ) as roles:
        yield roles


SERVICE = Service(NAME, Settings, bootstrap, MIGRATIONS)
