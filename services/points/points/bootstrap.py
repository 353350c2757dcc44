"""The points service's composition root: the one place that wires everything."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import eventbus
import structlog
from eventbus.service import Extras, Subscription, assemble
from kit.cli import Roles, Service
from kit.grpc_server import Registration
from kit.lifecycle import Component
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc

from points.config import Settings
from points.domain.expiry import ExpiryPolicy
from points.entrypoints.auth import authenticate
from points.entrypoints.consumers import (
    PAYMENT_ATTRIBUTED,
    REFUND_ATTRIBUTED,
    on_refund_attributed,
    payment_attributed,
)
from points.entrypoints.expiry import expiry_commands, expiry_job
from points.entrypoints.grpc_admin import PointsAdminServicer
from points.entrypoints.grpc_api import PointsServicer
from points.entrypoints.merge_consumer import IDENTITY_MERGED, on_identity_merged
from points.entrypoints.ops import wechat_sync_commands
from points.entrypoints.policy import policy_commands
from points.entrypoints.recon_grpc import (
    Reconciler,
    ReconciliationServicer,
    platform_from,
    reconcile_command,
)
from points.entrypoints.reward_consumer import COUPON_CLAIMED, on_coupon_claimed
from points.service_layer.wechat_sync import SyncPolicy, WeChatPointsSync, default_time_zone

NAME = "points"
MIGRATIONS = [eventbus.MIGRATIONS, (NAME, Path(__file__).parent / "migrations")]

log = structlog.get_logger(__name__)


def wechat_sync(settings: Settings, pool: asyncpg.Pool) -> Component:
    """The points-sync worker (relay role: outbound delivery), or a warning if unconfigured.

    Keys are loaded now, so a bad key file stops the process at start. The worker's pool and
    HTTP session open when the component runs, so other roles pay nothing for it.
    """
    client = settings.wechatpay_client()
    default_time_zone(NAME)  # an image without time zone data fails here, not per report
    if client is None:

        async def disabled(stop: asyncio.Event) -> None:
            log.warning(
                "wechat_points_sync_disabled",
                reason="WECHATPAY_API_BASE is not set: points reports are queued, not sent",
            )

        return disabled
    send_timeout_s = settings.wechatpay_timeout_s + 5  # the client's own timeout fires first
    policy = SyncPolicy(
        batch_size=settings.wechatpay_sync_batch_size,
        lease_s=max(settings.wechatpay_sync_lease_s, 2 * send_timeout_s),
        send_timeout_s=send_timeout_s,
        retry_base_s=settings.wechatpay_sync_retry_base_s,
        retry_max_s=settings.wechatpay_sync_retry_max_s,
        poll_interval_s=settings.wechatpay_sync_poll_interval_s,
    )

    async def run(stop: asyncio.Event) -> None:
        async with client:
            await WeChatPointsSync(pool, client, policy=policy).run(stop)

    return run


def reconciler(settings: Settings, pool: asyncpg.Pool) -> Reconciler:
    platform = platform_from(settings.wechatpay_bill_url, settings.wechatpay_mchid)
    return Reconciler(pool, settings.nats_url, platform)


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    expiry = ExpiryPolicy.parse(settings.points_expiry_policy)

    @functools.cache  # one servicer for the main and the admin port
    def accounts(pool: asyncpg.Pool) -> Registration:
        servicer = PointsServicer(pool, hold_ttl=timedelta(seconds=settings.hold_ttl_s))
        return points_service_pb2_grpc.add_PointsServiceServicer_to_server, servicer

    async with assemble(
        NAME,
        settings,
        streams=["MEMBER", "POINTS", "COUPONS"],
        subscriptions=[
            Subscription(
                "payment-attributed", "MEMBER", PAYMENT_ATTRIBUTED, payment_attributed(expiry)
            ),
            Subscription("refund-attributed", "MEMBER", REFUND_ATTRIBUTED, on_refund_attributed),
            Subscription("identity-merged", "MEMBER", IDENTITY_MERGED, on_identity_merged),
            Subscription("coupon-claimed", "COUPONS", COUPON_CLAIMED, on_coupon_claimed),
        ],
        servicers=lambda pool: [accounts(pool)],
        # Rules, reconciliation and PointsService's AdjustPoints (entrypoints.auth) are ops':
        # on ADMIN_GRPC_PORT when it is set.
        admin_servicers=lambda pool: [
            accounts(pool),
            (
                points_service_pb2_grpc.add_PointsAdminServiceServicer_to_server,
                PointsAdminServicer(pool),
            ),
            (
                points_service_pb2_grpc.add_ReconciliationServiceServicer_to_server,
                ReconciliationServicer(reconciler(settings, pool)),
            ),
        ],
        descriptor=points_service_pb2.DESCRIPTOR,
        authenticate=lambda pool: authenticate,
        extras=lambda pool: Extras(
            components={
                "relay": [
                    wechat_sync(settings, pool),
                    expiry_job(pool, settings.expiry_interval_s, settings.expiry_reminder_days),
                ]
            },
            commands=wechat_sync_commands(pool.acquire)
            | expiry_commands(pool.acquire, settings.expiry_reminder_days)
            | policy_commands(pool.acquire)
            | reconcile_command(reconciler(settings, pool)),
        ),
    ) as roles:
        yield roles


SERVICE = Service(NAME, Settings, bootstrap, MIGRATIONS)
