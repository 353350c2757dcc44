"""The member service's composition root: the one place that wires everything."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import eventbus
from eventbus.service import Subscription, assemble
from kit.cli import Roles, Service
from kit.grpc_server import Registration
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc
from nats.js.client import JetStreamContext

from member.config import Settings
from member.domain.checkout import CheckoutPolicy
from member.entrypoints.auth import CredentialAuthenticator
from member.entrypoints.consumers import (
    AUTHORIZATION_CHANGED,
    PAYMENT_CAPTURED,
    PAYMENT_REFUNDED,
    on_authorization_changed,
    on_payment_captured,
    on_payment_refunded,
)
from member.entrypoints.directory_kv import DIRECTORY_CHANGED, directory_projection
from member.entrypoints.grpc_api import DirectoryServicer, MemberServicer
from member.entrypoints.grpc_crm import CrmServicer
from member.entrypoints.ops import ops_extras
from member.entrypoints.tag_jobs import PAYMENT_ATTRIBUTED, REFUND_ATTRIBUTED
from member.entrypoints.tag_jobs import on_payment_attributed as tag_payers
from member.entrypoints.tag_jobs import on_refund_attributed as untag_refunded

NAME = "member"
MIGRATIONS = [eventbus.MIGRATIONS, (NAME, Path(__file__).parent / "migrations")]


async def subscriptions(js: JetStreamContext) -> list[Subscription]:
    directory = await open_bucket(js, DIRECTORY_BUCKET)
    return [
        Subscription("payment-captured", "PAYMENTS", PAYMENT_CAPTURED, on_payment_captured),
        Subscription("payment-refunded", "PAYMENTS", PAYMENT_REFUNDED, on_payment_refunded),
        Subscription(
            "authorization-changed", "PAYMENTS", AUTHORIZATION_CHANGED, on_authorization_changed
        ),
        Subscription("directory-kv", "MEMBER", DIRECTORY_CHANGED, directory_projection(directory)),
        Subscription("tag-rules", "MEMBER", PAYMENT_ATTRIBUTED, tag_payers),
        Subscription("tag-rules-refunds", "MEMBER", REFUND_ATTRIBUTED, untag_refunded),
    ]


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Roles]:
    checkout_policy = CheckoutPolicy(
        code_ttl_s=settings.checkout_code_ttl_s, clock_skew_s=settings.pos_clock_skew_s
    )

    @functools.cache  # one servicer for the main and the admin port
    def members(pool: asyncpg.Pool) -> Registration:
        servicer = MemberServicer(pool, checkout_policy)
        return member_service_pb2_grpc.add_MemberServiceServicer_to_server, servicer

    async with assemble(
        NAME,
        settings,
        streams=["PAYMENTS", "MEMBER"],
        subscriptions=subscriptions,
        servicers=lambda pool: [
            members(pool),
            (member_service_pb2_grpc.add_CrmServiceServicer_to_server, CrmServicer(pool)),
        ],
        # Ops only (IssueCredential, ...), and MemberService for its ops RPCs (MergeMembers,
        # ...; entrypoints.auth): on ADMIN_GRPC_PORT when it is set.
        admin_servicers=lambda pool: [
            members(pool),
            (
                member_service_pb2_grpc.add_DirectoryServiceServicer_to_server,
                DirectoryServicer(pool),
            ),
        ],
        descriptor=member_service_pb2.DESCRIPTOR,
        extras=lambda pool: ops_extras(pool, settings.tag_rules_interval_s),
        authenticate=lambda pool: CredentialAuthenticator(
            pool, cache_s=settings.credential_cache_s
        ),
    ) as roles:
        yield roles


SERVICE = Service(NAME, Settings, bootstrap, MIGRATIONS)
