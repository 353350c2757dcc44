"""The parking service's composition root: the one place that wires everything."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import eventbus
from eventbus.service import Extras, Subscription, assemble
from kit.cli import Roles, Service
from kit.directory import Directory
from kit.jetstream import connect
from mall.parking.v1 import parking_service_pb2, parking_service_pb2_grpc

from parking.adapters.points import points_client
from parking.config import Settings
from parking.entrypoints.auth import CarParkAuthenticator
from parking.entrypoints.consumers import (
    COUPON_CLAIMED,
    COUPON_REVOKED,
    DIRECTORY_CHANGED,
    IDENTITY_MERGED,
    PAYMENT_ATTRIBUTED,
    REFUND_ATTRIBUTED,
    TIER_CHANGED,
    on_coupon_claimed,
    on_coupon_revoked,
    on_directory_changed,
    on_identity_merged,
    on_payment_attributed,
    on_refund_attributed,
    on_tier_changed,
)
from parking.entrypoints.grpc_admin import ParkingAdminServicer
from parking.entrypoints.grpc_api import ParkingServicer
from parking.entrypoints.grpc_carpark import CarParkServicer
from parking.entrypoints.jobs import holds_job, wechat_job
from parking.entrypoints.ops import ops_commands
from parking.service_layer.config_cache import ConfigCache

NAME = "parking"
MIGRATIONS = [eventbus.MIGRATIONS, (NAME, Path(__file__).parent / "migrations")]

SUBSCRIPTIONS = [
    Subscription("payment-attributed", "MEMBER", PAYMENT_ATTRIBUTED, on_payment_attributed),
    Subscription("refund-attributed", "MEMBER", REFUND_ATTRIBUTED, on_refund_attributed),
    Subscription("tier-changed", "MEMBER", TIER_CHANGED, on_tier_changed),
    Subscription("directory", "MEMBER", DIRECTORY_CHANGED, on_directory_changed),
    Subscription("identity-merged", "MEMBER", IDENTITY_MERGED, on_identity_merged),
    Subscription("coupon-claimed", "COUPONS", COUPON_CLAIMED, on_coupon_claimed),
    Subscription("coupon-revoked", "COUPONS", COUPON_REVOKED, on_coupon_revoked),
]


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    config = ConfigCache(settings.config_cache_s)
    directory = Directory()  # car-park credentials, mirrored from member's bucket
    wechat = settings.wechatpay_client()  # keys load now: a bad file stops the start
    async with (
        connect(settings.nats_url, name=f"{NAME}-directory") as directory_nc,
        points_client(settings.points_grpc_target, settings.points_timeout_s) as points,
        assemble(
            NAME,
            settings,
            streams=["MEMBER", "COUPONS", "PARKING"],
            subscriptions=SUBSCRIPTIONS,
            servicers=lambda pool: [
                (
                    parking_service_pb2_grpc.add_ParkingServiceServicer_to_server,
                    ParkingServicer(
                        pool,
                        config,
                        points,
                        prepaid_grace=timedelta(minutes=settings.prepaid_grace_minutes),
                    ),
                ),
                (
                    parking_service_pb2_grpc.add_CarParkServiceServicer_to_server,
                    CarParkServicer(pool, config, points),
                ),
            ],
            # Fee schedules and policies are ops': on ADMIN_GRPC_PORT when it is set.
            admin_servicers=lambda pool: [
                (
                    parking_service_pb2_grpc.add_ParkingAdminServiceServicer_to_server,
                    ParkingAdminServicer(pool, config),
                ),
            ],
            descriptor=parking_service_pb2.DESCRIPTOR,
            extras=lambda pool: Extras(
                components={
                    "serve": [directory.mirrored(directory_nc.jetstream())],
                    "relay": [
                        holds_job(pool, points, settings.holds_interval_s),
                        wechat_job(
                            pool,
                            wechat,
                            interval_s=settings.wechatpay_poll_interval_s,
                            retry_max_s=settings.wechatpay_retry_max_s,
                        ),
                    ],
                },
                commands=ops_commands(pool.acquire),
            ),
            authenticate=lambda pool: CarParkAuthenticator(
                directory, cache_s=settings.credential_cache_s
            ),
        ) as roles,
    ):
        yield roles


SERVICE = Service(NAME, Settings, bootstrap, MIGRATIONS)
