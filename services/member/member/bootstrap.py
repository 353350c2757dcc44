"""The member service's composition root: the one place that wires everything."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import eventbus
from eventbus.service import Subscription, assemble
from kit.cli import Roles, Service
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc
from nats.js.client import JetStreamContext

from member.config import Settings
from member.entrypoints.consumers import (
    PAYMENT_CAPTURED,
    PAYMENT_REFUNDED,
    on_payment_captured,
    on_payment_refunded,
)
from member.entrypoints.directory_kv import DIRECTORY_CHANGED, directory_projection
from member.entrypoints.grpc_api import DirectoryServicer, MemberServicer

NAME = "member"
MIGRATIONS = [eventbus.MIGRATIONS, (NAME, Path(__file__).parent / "migrations")]


async def subscriptions(js: JetStreamContext) -> list[Subscription]:
    directory = await open_bucket(js, DIRECTORY_BUCKET)
    return [
        Subscription("payment-captured", "PAYMENTS", PAYMENT_CAPTURED, on_payment_captured),
        Subscription("payment-refunded", "PAYMENTS", PAYMENT_REFUNDED, on_payment_refunded),
        Subscription("directory-kv", "MEMBER", DIRECTORY_CHANGED, directory_projection(directory)),
    ]


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    async with assemble(
        NAME,
        settings,
        streams=["PAYMENTS", "MEMBER"],
        subscriptions=subscriptions,
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
