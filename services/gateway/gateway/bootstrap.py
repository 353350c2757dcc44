"""The gateway's composition root."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import structlog
from eventbus.streams import ensure_streams
from grpc_health.v1 import health_pb2_grpc
from kit.cli import Roles, Service
from kit.grpc_client import insecure_channel
from kit.jetstream import connect
from kit.kvmirror import DIRECTORY_BUCKET, KvMirror, open_bucket
from kit.lifecycle import Component
from mall.coupons.v1 import commitments_service_pb2_grpc, coupons_service_pb2_grpc
from mall.member.v1 import member_service_pb2_grpc
from mall.parking.v1 import parking_service_pb2_grpc
from mall.points.v1 import points_service_pb2_grpc

from gateway.adapters.bus import PaymentsPublisher
from gateway.adapters.claims_feed import ClaimsFeed
from gateway.adapters.coupons import CouponsClient
from gateway.adapters.directory import Directory
from gateway.adapters.live import PointsFeed
from gateway.adapters.merchants import load_merchants
from gateway.adapters.miniprogram import WechatLogin, load_miniprogram_secrets
from gateway.adapters.parking import ParkingSection
from gateway.adapters.replays import ReplayGuard
from gateway.adapters.rewards import RewardsClient
from gateway.adapters.services import Backends
from gateway.adapters.spent import SpentRefreshTokens
from gateway.adapters.tokens import SessionTokens
from gateway.config import Settings
from gateway.entrypoints.app import HttpServer, create_app
from gateway.entrypoints.coupons import COUPONS, CouponsApi
from gateway.entrypoints.keys import Shoppers, Webhooks
from gateway.entrypoints.rewards import REWARDS
from gateway.entrypoints.shoppers import count_card_read, render_card
from gateway.entrypoints.streams import Streams
from gateway.entrypoints.throttle import RateLimits
from gateway.service_layer.card import CardReader, SectionSource
from gateway.service_layer.claims import Claims, SoldOutMemory
from gateway.service_layer.live import LiveHub
from gateway.service_layer.merges import MergedMembers
from gateway.service_layer.rewards import Rewards

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
        contextlib.AsyncExitStack() as optional_channels,
        (
            insecure_channel(settings.coupons_grpc_target)
            if settings.coupons_grpc_target
            else contextlib.nullcontext(None)
        ) as coupons_channel,
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.wechat_timeout_s)
        ) as wechat_http,
    ):
        js = nc.jetstream()
        await ensure_streams(js, "PAYMENTS", replicas=settings.jetstream_replicas, service=NAME)
        await open_bucket(js, DIRECTORY_BUCKET, replicas=settings.jetstream_replicas, owned=False)
        directory = Directory()
        mirror = KvMirror(js, DIRECTORY_BUCKET, directory.apply)
        webhooks = Webhooks(
            merchants=merchants,
            shops=directory,
            guard=await ReplayGuard.open(js, replicas=settings.wechatpay_replay_replicas),
            directory_ready=mirror.ready.is_set,
            max_skew_s=settings.wechatpay_max_skew_s,
        )
        components: list[Component] = [mirror.run]
        parking_channel = (
            await optional_channels.enter_async_context(
                insecure_channel(settings.parking_grpc_target)
            )
            if settings.parking_grpc_target
            else None
        )
        backends = Backends(
            member=member_service_pb2_grpc.MemberServiceStub(member_channel),
            points=points_service_pb2_grpc.PointsServiceStub(points_channel),
            parking=parking_service_pb2_grpc.ParkingServiceStub(parking_channel)
            if parking_channel
            else None,
            health={
                "member": health_pb2_grpc.HealthStub(member_channel),
                "points": health_pb2_grpc.HealthStub(points_channel),
                **(
                    {"parking": health_pb2_grpc.HealthStub(parking_channel)}
                    if parking_channel
                    else {}
                ),
                **(
                    {"coupons": health_pb2_grpc.HealthStub(coupons_channel)}
                    if coupons_channel is not None
                    else {}
                ),
            },
        )
        coupons = (
            CouponsClient(
                coupons=coupons_service_pb2_grpc.CouponsServiceStub(coupons_channel),
                commitments=commitments_service_pb2_grpc.CommitmentServiceStub(coupons_channel),
                member=backends.member,
            )
            if coupons_channel is not None
            else None
        )
        coupons_api = None
        shoppers = None
        if settings.miniprogram_secrets_file is not None and settings.session_signing_key:
            hub = LiveHub()
            deadline = settings.card_section_deadline_s
            cards = CardReader(
                [
                    SectionSource("member", backends.card_member, deadline),
                    SectionSource("points", backends.card_points, deadline),
                    SectionSource("coupons", coupons.card_section if coupons else None, deadline),
                    # Not connected yet: answered "unavailable / not_connected" until wired.
                    SectionSource(
                        "parking",
                        ParkingSection(backends.parking).fetch if backends.parking else None,
                        deadline,
                    ),
                ],
                render_card,
                ttl_s=settings.card_ttl_s,
                degraded_ttl_s=settings.card_degraded_ttl_s,
                stale_s=settings.card_stale_s,
                max_refreshing=settings.card_max_refreshing,
                counted=count_card_read,
            )
            merges = MergedMembers()
            feed = PointsFeed(nc, hub, changed=cards.invalidate, merged=merges.record)
            if coupons is not None:
                sold_out = SoldOutMemory(sold_out_s=settings.claim_sold_out_memory_s)
                coupons_api = CouponsApi(
                    client=coupons,
                    claims=Claims(
                        coupons,
                        sold_out,
                        max_batch=settings.claim_batch_max,
                        workers=settings.claim_batch_workers,
                        profile_s=settings.claim_profile_ttl_s,
                    ),
                    appid_for_mall=directory.appid_for_mall,
                )
                claims_feed = ClaimsFeed(nc, sold_out, forget=coupons_api.claims.forget_profile)
                components.append(claims_feed.run)
            streams = Streams(heartbeat_s=settings.sse_heartbeat_s)
            components += [feed.run, streams.run]
            shoppers = Shoppers(
                malls=directory,
                wechat=WechatLogin(
                    wechat_http,
                    base_url=settings.wechat_api_base,
                    secrets=load_miniprogram_secrets(settings.miniprogram_secrets_file),
                ),
                tokens=SessionTokens(
                    settings.session_signing_key.get_secret_value(),
                    access_ttl_s=settings.session_ttl_s,
                    refresh_ttl_s=settings.refresh_ttl_s,
                ),
                spent=await SpentRefreshTokens.open(
                    js, ttl_s=settings.refresh_ttl_s, replicas=settings.wechatpay_replay_replicas
                ),
                hub=hub,
                cards=cards,
                streams=streams,
                directory_ready=mirror.ready.is_set,
                merges=merges,
            )
        else:
            log.warning("no_miniprogram_login", hint="set MINIPROGRAM_SECRETS_FILE")
        app = create_app(
            PaymentsPublisher(nc, timeout_s=settings.publish_timeout_s),
            backends,
            webhooks,
            accept_unsigned=settings.wechatpay_accept_unsigned,
            shoppers=shoppers,
            limits=RateLimits(
                per_ip=settings.rate_limit_per_ip or None,
                per_member=settings.rate_limit_per_member or None,
                client_header=settings.rate_limit_client_header or None,
            ),
            max_body_bytes=settings.http_max_body_bytes,
        )
        if coupons_api is not None:
            app[COUPONS] = coupons_api
            app[REWARDS] = Rewards(
                RewardsClient(backends.points, coupons_api.client.coupons, coupons_api.client)
            )
        http = HttpServer(
            app, host=settings.http_host, port=settings.http_port, grace_s=settings.shutdown_grace_s
        )
        yield Roles(components={"serve": [*components, http.run]}, http=http)


SERVICE = Service(NAME, Settings, bootstrap, migrations=[])
