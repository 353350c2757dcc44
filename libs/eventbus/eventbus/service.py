"""Assemble a service's roles from its declarations: the plumbing every service shares.

A service's composition root names its streams, consumers and servicers; this opens the pool
and the NATS connection, ensures streams and durable consumers, and builds the gRPC server
(health following PostgreSQL and NATS), the outbox relay and the consumer loops.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import nats.js.errors
from google.protobuf.descriptor import FileDescriptor
from kit.cli import Command, Roles
from kit.db import open_pool, ping
from kit.grpc_server import Authenticator, GrpcServer, Registration
from kit.jetstream import connect
from kit.kvmirror import DIRECTORY_BUCKET, DIRECTORY_OWNER, open_bucket
from kit.lifecycle import Component
from kit.settings import ServiceSettings
from nats.js.client import JetStreamContext

from eventbus.consumer import Consumer, Handler
from eventbus.ops import dead_letter_commands
from eventbus.relay import OutboxRelay
from eventbus.streams import ensure_streams


@dataclass(frozen=True)
class Extras:
    """What a service adds beyond the shared roles: more components per role (e.g. an
    outbound delivery worker in ``relay``) and ops commands, built on the service's pool."""

    components: dict[str, list[Component]] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)


@dataclass(frozen=True)
class Subscription:
    """One durable consumer: ``<service>-<handler>`` on one subject of one stream."""

    handler_name: str
    stream: str
    subject: str
    handler: Handler


@dataclass(frozen=True)
class Retired:
    """A durable consumer the service had and no longer has (``<service>-<handler>``)."""

    handler_name: str
    stream: str


async def retire(js: JetStreamContext, name: str, retired: Sequence[Retired]) -> None:
    """Delete the service's retired durable consumers. Nothing reads them any more, yet the
    stream would keep each one's state, and its pending count would grow with every message
    on its subject for as long as the stream lives; a later start finds them gone already."""
    for r in retired:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(r.stream, f"{name}-{r.handler_name}")


@contextlib.asynccontextmanager
async def assemble(
    name: str,
    settings: ServiceSettings,
    *,
    streams: Sequence[str],
    subscriptions: Sequence[Subscription]
    | Callable[[JetStreamContext], Awaitable[Sequence[Subscription]]] = (),
    servicers: Callable[[asyncpg.Pool], Sequence[Registration]] = lambda pool: (),
    admin_servicers: Callable[[asyncpg.Pool], Sequence[Registration]] = lambda pool: (),
    descriptor: FileDescriptor | Sequence[FileDescriptor],
    extras: Callable[[asyncpg.Pool], Extras] | None = None,
    authenticate: Callable[[asyncpg.Pool], Authenticator] | None = None,
    retired: Sequence[Retired] = (),
) -> AsyncIterator[Roles]:
    """``authenticate`` builds the gRPC server's auth hook on the pool (see GrpcServer);
    ``admin_servicers`` are the admin APIs, served on ADMIN_GRPC_PORT when it is set (ops
    reach it by port-forward) and with ``servicers`` on GRPC_PORT when it is not;
    ``retired`` names the durable consumers the service dropped (deleted at every start).

    ``descriptor`` names the proto file(s) whose services the process serves: health and
    reflection list every service in them."""
    files = [descriptor] if isinstance(descriptor, FileDescriptor) else list(descriptor)
    async with (
        open_pool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            application_name=name,
        ) as pool,
        connect(settings.nats_url, name=name) as nc,
    ):
        js = nc.jetstream()
        await ensure_streams(js, *streams, replicas=settings.jetstream_replicas, service=name)
        await open_bucket(
            js,
            DIRECTORY_BUCKET,
            replicas=settings.jetstream_replicas,
            owned=name == DIRECTORY_OWNER,
        )
        await retire(js, name, retired)
        if callable(subscriptions):  # handlers that need JetStream themselves (a KV bucket)
            subscriptions = await subscriptions(js)
        consumers = [
            Consumer(
                pool,
                js,
                name=f"{name}-{s.handler_name}",
                stream=s.stream,
                subject=s.subject,
                handler=s.handler,
                batch_size=settings.consumer_batch_size,
                ack_wait_s=settings.consumer_ack_wait_s,
                linger_s=settings.consumer_linger_s,
            )
            for s in subscriptions
        ]

        async def db_ok() -> bool:
            return await ping(pool)

        async def nats_ok() -> bool:
            return bool(nc.is_connected)

        grpc = GrpcServer(
            service=name,
            registrations=servicers(pool),
            admin_registrations=admin_servicers(pool),
            service_names=[s.full_name for f in files for s in f.services_by_name.values()],
            health_checks=[db_ok, nats_ok],
            host=settings.grpc_host,
            port=settings.grpc_port,
            admin_port=settings.admin_grpc_port,
            default_deadline_s=settings.grpc_default_deadline_s,
            grace_s=settings.shutdown_grace_s,
            max_connection_age_s=settings.grpc_max_connection_age_s,
            authenticate=authenticate(pool) if authenticate is not None else None,
        )
        more = extras(pool) if extras is not None else Extras()
        components: dict[str, list[Component]] = {
            "serve": [grpc.run],
            "relay": [OutboxRelay(pool, js, linger_s=settings.outbox_linger_s).run],
            "consume": [c.run for c in consumers],
        }
        for role, added in more.components.items():
            components[role] = [*components.get(role, []), *added]
        yield Roles(
            components=components,
            commands={**dead_letter_commands(pool, consumers), **more.commands},
            grpc=grpc,
        )
