"""System-level fixtures: the whole payment path in one event loop, on real PostgreSQL and
NATS JetStream (embedded unless DATABASE_URL / NATS_URL are given)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import pytest
from gateway.bootstrap import bootstrap as gateway_bootstrap
from gateway.config import Settings as GatewaySettings
from kit.cli import running
from kit.migrations import migrate
from mall_testing.plugin import FreshDatabase, Nats
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from member.bootstrap import bootstrap as member_bootstrap
from member.config import Settings as MemberSettings
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.bootstrap import bootstrap as points_bootstrap
from points.config import Settings as PointsSettings


@dataclass
class Suite:
    gateway_url: str
    member_db: str
    points_db: str
    member_grpc: str
    points_grpc: str
    nats_url: str
    http: aiohttp.ClientSession


async def _grpc_port(roles_grpc: object) -> int:
    for _ in range(200):
        port = getattr(roles_grpc, "port", 0)
        if port:
            return int(port)
        await asyncio.sleep(0.02)
    raise RuntimeError("gRPC server did not start")


@contextlib.asynccontextmanager
async def start_suite(
    fresh_database: FreshDatabase,
    nats_url: str,
    *,
    points_roles: tuple[str, ...] = ("serve", "relay", "consume"),
) -> AsyncIterator[Suite]:
    member_db = await fresh_database("member")
    points_db = await fresh_database("points")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    common = {"nats_url": nats_url, "grpc_port": 0, "log_format": "console", "log_level": "warning"}
    async with contextlib.AsyncExitStack() as stack:
        member = await stack.enter_async_context(
            member_bootstrap(MemberSettings(database_url=member_db, **common))  # type: ignore[arg-type]
        )
        await stack.enter_async_context(running(member))
        points = await stack.enter_async_context(
            points_bootstrap(PointsSettings(database_url=points_db, **common))  # type: ignore[arg-type]
        )
        await stack.enter_async_context(running(points, points_roles))
        member_port = await _grpc_port(member.grpc)
        points_port = await _grpc_port(points.grpc) if "serve" in points_roles else 0
        gateway = await stack.enter_async_context(
            gateway_bootstrap(
                GatewaySettings(
                    nats_url=nats_url,
                    http_port=0,
                    # The foundation's tests post decrypted resources; the signed route and
                    # the simulator are exercised in test_wechatpay_path.py.
                    wechatpay_accept_unsigned=True,
                    member_grpc_target=f"127.0.0.1:{member_port}",
                    points_grpc_target=f"127.0.0.1:{points_port}",
                    log_format="console",
                    log_level="warning",
                )
            )
        )
        await stack.enter_async_context(running(gateway))
        http_port = 0
        for _ in range(200):
            http_port = gateway.http.port
            if http_port:
                break
            await asyncio.sleep(0.02)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield Suite(
            gateway_url=f"http://127.0.0.1:{http_port}",
            member_db=member_db,
            points_db=points_db,
            member_grpc=f"127.0.0.1:{member_port}",
            points_grpc=f"127.0.0.1:{points_port}",
            nats_url=nats_url,
            http=session,
        )


@pytest.fixture
async def suite(
    fresh_database: FreshDatabase, nats_url: str, jetstream: Nats
) -> AsyncIterator[Suite]:
    async with start_suite(fresh_database, nats_url) as s:
        yield s


async def fetchval(dsn: str, query: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()
