"""The gateway's composition root."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog
from eventbus.streams import ensure_streams
from kit.cli import Roles, Service
from kit.grpc_client import insecure_channel
from kit.jetstream import connect
from kit.kvmirror import DIRECTORY_BUCKET, KvMirror
from mall.member.v1 import member_service_pb2_grpc
from mall.points.v1 import points_service_pb2_grpc

from gateway.adapters.bus import PaymentsPublisher
from gateway.adapters.directory import Directory
from gateway.adapters.merchants import load_merchants
from gateway.adapters.replays import ReplayGuard
from gateway.adapters.services import Backends
from gateway.config import Settings
from gateway.entrypoints.app import HttpServer, create_app
from gateway.entrypoints.keys import Webhooks

NAME = "gateway"
log = structlog.get_logger(NAME)


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    merchants = (
        load_merchants(settings.wechatpay_merchants_file)
        if settings.wechatpay_merchants_file
        else {}
    )
    if not merchants:
        log.warning("no_wechatpay_merchants", hint="set WECHATPAY_MERCHANTS_FILE")
    async with (
        connect(settings.nats_url, name=NAME) as nc,
        insecure_channel(settings.member_grpc_target) as member_channel,
        insecure_channel(settings.points_grpc_target) as points_channel,
    ):
        js = nc.jetstream()
        await ensure_streams(js, "PAYMENTS", replicas=settings.jetstream_replicas)
        directory = Directory()
        mirror = KvMirror(js, DIRECTORY_BUCKET, directory.apply)
        webhooks = Webhooks(
            merchants=merchants,
            shops=directory,
            guard=await ReplayGuard.open(js, replicas=settings.wechatpay_replay_replicas),
            directory_ready=mirror.ready.is_set,
            max_skew_s=settings.wechatpay_max_skew_s,
        )
        app = create_app(
            PaymentsPublisher(nc, timeout_s=settings.publish_timeout_s),
            Backends(
                member=member_service_pb2_grpc.MemberServiceStub(member_channel),
                points=points_service_pb2_grpc.PointsServiceStub(points_channel),
            ),
            webhooks,
            accept_unsigned=settings.wechatpay_accept_unsigned,
        )
        http = HttpServer(
            app, host=settings.http_host, port=settings.http_port, grace_s=settings.shutdown_grace_s
        )
        yield Roles(components={"serve": [mirror.run, http.run]}, http=http)


SERVICE = Service(NAME, Settings, bootstrap, migrations=[])
