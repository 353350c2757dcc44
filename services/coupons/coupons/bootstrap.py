"""The coupons service's composition root.

CouponsService (stocks, claims, the flash grab's batch claim, redemption, rules, figures) and
CommitmentService over gRPC with health and reflection; post-payment and refund consumers on
member's events; parking-hour coupons used by settled parking sessions (parking's events);
member merges followed; the outbox relay and periodic jobs; the directory (stores, tenant
credentials) mirrored from member's DIRECTORY bucket in the serve role, for both APIs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import eventbus
from eventbus.service import Extras, Retired, Subscription, assemble
from kit.cli import Roles, Service
from kit.directory import Directory
from kit.grpc_server import Registration
from kit.jetstream import connect
from mall.coupons.v1 import (
    commitments_service_pb2,
    commitments_service_pb2_grpc,
    coupons_service_pb2,
    coupons_service_pb2_grpc,
)

from coupons.commitment_settings import CommitmentSettings
from coupons.config import Settings
from coupons.entrypoints import card_package, consumers, merge_consumer
from coupons.entrypoints import commitment_consumers as commitment_events
from coupons.entrypoints.auth import CredentialAuthenticator
from coupons.entrypoints.commitment_grpc import CommitmentServicer
from coupons.entrypoints.commitment_jobs import clawback_job, commitment_commands, sweep_job
from coupons.entrypoints.expiry import expiry_commands, expiry_job
from coupons.entrypoints.grpc_api import CouponsServicer
from coupons.expiry_settings import ExpirySettings
from coupons.service_layer.redemptions import Redeemer
from coupons.service_layer.sold_out import SoldOutMemory

NAME = "coupons"
MIGRATIONS = [eventbus.MIGRATIONS, (NAME, Path(__file__).parent / "migrations")]


@contextlib.asynccontextmanager
async def bootstrap(
    settings: Settings,
    commitments: CommitmentSettings | None = None,
    expiry: ExpirySettings | None = None,
) -> AsyncIterator[Roles]:
    commitments = commitments or CommitmentSettings()
    expiry = expiry or ExpirySettings()
    expiry_reminder = timedelta(days=expiry.coupon_expiry_reminder_days)
    remind_before = timedelta(hours=commitments.commitment_reminder_hours)
    settle_grace = timedelta(seconds=commitments.commitment_settle_grace_s)
    directory = Directory()  # stores and tenant credentials, mirrored from member's bucket

    @functools.cache  # one servicer (and one Redeemer) for the main and the admin port
    def coupons_api(pool: asyncpg.Pool) -> Registration:
        redeemer = Redeemer(
            pool,
            max_batch=settings.redemption_batch_max,
            workers=settings.redemption_batch_workers,
        )
        servicer = CouponsServicer(
            pool, directory, SoldOutMemory(settings.sold_out_memory_s), redeemer
        )
        return coupons_service_pb2_grpc.add_CouponsServiceServicer_to_server, servicer

    async with (
        connect(settings.nats_url, name=f"{NAME}-directory") as directory_nc,
        assemble(
            NAME,
            settings,
            streams=["COUPONS", "MEMBER", "PARKING"],
            # The commitment RPCs' directory copy in SQL, now kit.directory (migration 0058).
            retired=[
                Retired("commitment-credentials", "MEMBER"),
                Retired("commitment-stores", "MEMBER"),
            ],
            subscriptions=[
                *commitment_subscriptions(),
                *card_package_subscriptions(),
                Subscription(
                    "post-payment",
                    "MEMBER",
                    consumers.PAYMENT_ATTRIBUTED,
                    consumers.on_payment_attributed,
                ),
                Subscription(
                    "refunds", "MEMBER", consumers.REFUND_ATTRIBUTED, consumers.on_refund_attributed
                ),
                Subscription(
                    "identity-merged",
                    "MEMBER",
                    merge_consumer.IDENTITY_MERGED,
                    merge_consumer.on_identity_merged,
                ),
                Subscription(
                    "parking-settled",
                    "PARKING",
                    consumers.SESSION_SETTLED,
                    consumers.on_session_settled,
                ),
            ],
            servicers=lambda pool: [
                coupons_api(pool),
                (
                    commitments_service_pb2_grpc.add_CommitmentServiceServicer_to_server,
                    CommitmentServicer(pool, directory),
                ),
            ],
            # Stock RPCs without a credential are ops calls, taken on ADMIN_GRPC_PORT only
            # when it is set (entrypoints.auth); the same servicer serves both ports.
            admin_servicers=lambda pool: [coupons_api(pool)],
            descriptor=[coupons_service_pb2.DESCRIPTOR, commitments_service_pb2.DESCRIPTOR],
            extras=lambda pool: Extras(
                components={
                    "serve": [directory.mirrored(directory_nc.jetstream())],
                    "relay": [
                        sweep_job(
                            pool,
                            commitments.commitment_sweep_interval_s,
                            remind_before,
                            settle_grace,
                        ),
                        clawback_job(commitments, pool),
                        expiry_job(pool, expiry.coupon_expiry_interval_s, expiry_reminder),
                        card_package.card_package_job(commitments, pool),
                    ],
                },
                commands=commitment_commands(pool.acquire, remind_before, settle_grace)
                | expiry_commands(pool.acquire, expiry_reminder)
                | card_package.card_package_commands(pool.acquire, commitments.wechatpay_mchid),
            ),
            authenticate=lambda pool: CredentialAuthenticator(directory),
        ) as roles,
    ):
        yield roles


def commitment_subscriptions() -> list[Subscription]:
    """Commitment cards: payments count on cards, refunds stop counting."""
    return [
        Subscription(
            "commitment-payments",
            "MEMBER",
            commitment_events.PAYMENT_ATTRIBUTED,
            commitment_events.on_payment_attributed,
        ),
        Subscription(
            "commitment-refunds",
            "MEMBER",
            commitment_events.REFUND_ATTRIBUTED,
            commitment_events.on_refund_attributed,
        ),
    ]


def card_package_subscriptions() -> list[Subscription]:
    """The WeChat card package mirror: coupons' own events, and payers' WeChat identities."""
    return [
        Subscription(
            "card-package", "COUPONS", card_package.COUPON_EVENTS, card_package.on_coupon_events
        ),
        Subscription(
            "card-package-payers",
            "MEMBER",
            card_package.PAYMENT_ATTRIBUTED,
            card_package.on_payment_attributed,
        ),
    ]


SERVICE = Service(NAME, Settings, bootstrap, MIGRATIONS)
