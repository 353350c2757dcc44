"""The gateway's composition root."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from eventbus.streams import ensure_streams
from kit.cli import Roles, Service
from kit.grpc_client import insecure_channel
from kit.jetstream import connect
from mall.member.v1 import member_service_pb2_grpc
from mall.points.v1 import points_service_pb2_grpc

from gateway.adapters.bus import PaymentsPublisher
from gateway.adapters.services import Backends
from gateway.config import Settings
from gateway.entrypoints.app import HttpServer, create_app

NAME = "gateway"


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    async with (
        connect(settings.nats_url, name=NAME) as nc,
        insecure_channel(settings.member_grpc_target) as member_channel,
        insecure_channel(settings.points_grpc_target) as points_channel,
    ):
        await ensure_streams(nc.jetstream(), "PAYMENTS")
        app = create_app(
            PaymentsPublisher(nc, timeout_s=settings.publish_timeout_s),
            Backends(
                member=member_service_pb2_grpc.MemberServiceStub(member_channel),
                points=points_service_pb2_grpc.PointsServiceStub(points_channel),
            ),
        )
        http = HttpServer(
            app, host=settings.http_host, port=settings.http_port, grace_s=settings.shutdown_grace_s
        )
        yield Roles(components={"serve": [http.run]}, http=http)


SERVICE = Service(NAME, Settings, bootstrap, migrations=[])
