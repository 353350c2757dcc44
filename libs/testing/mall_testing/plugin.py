"""pytest plugin (entry point ``mall_testing``): real PostgreSQL and NATS JetStream fixtures.

* ``postgres_url`` (session): ``DATABASE_URL`` if set (a server admin URL; its database is only
  used for maintenance), else an embedded PostgreSQL started for the session.
* ``nats_url`` (session): ``NATS_URL`` if set, else an embedded nats-server with JetStream.
* ``fresh_database`` (module): ``await fresh_database("points")`` creates a new database on that
  server and returns its URL; every database it made is dropped when the module is done.
* ``jetstream`` (function): a connected :class:`Nats` (``.nc``, ``.js``) on a server from which
  every stream has just been deleted, so each test starts clean.  Note that with ``NATS_URL``
  pointing at a shared server this also deletes other users' streams.
* ``unique_id`` (function): a short unique string for test data.

Nothing here depends on the order tests run in.  Importing the plugin opens no connection.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from mall_testing.embedded import EmbeddedNats, EmbeddedPostgres

__all__ = ["FreshDatabase", "Nats", "database_url", "drop_database"]

FreshDatabase = Callable[[str], Awaitable[str]]
"""Type of the ``fresh_database`` fixture: ``async (prefix) -> database URL``."""

_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,40}")
_CREATE_ATTEMPTS = 5


@dataclass(frozen=True)
class Nats:
    """What the ``jetstream`` fixture yields."""

    nc: NatsClient
    js: JetStreamContext


def database_url(server_url: str, database: str) -> str:
    """``server_url`` with its database (the URL path) replaced by ``database``."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def drop_database(server_url: str, database: str) -> None:
    """``DROP DATABASE IF EXISTS … WITH (FORCE)`` through the server's admin URL."""
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(database)} WITH (FORCE)")
    finally:
        await conn.close()


async def _create_database(server_url: str, database: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            try:
                await conn.execute(f"CREATE DATABASE {_quote_ident(database)}")
                return
            except asyncpg.ObjectInUseError:
                # "source database template1 is being accessed by other users": someone else
                # is creating a database right now.  Brief, so retry.
                if attempt == _CREATE_ATTEMPTS:
                    raise
                await asyncio.sleep(0.1 * attempt)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Admin URL of the PostgreSQL server for this session (``DATABASE_URL`` or embedded)."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    with EmbeddedPostgres() as server:
        yield server.url


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of the NATS server (JetStream enabled) for this session (``NATS_URL`` or embedded)."""
    configured = os.environ.get("NATS_URL")
    if configured:
        yield configured
        return
    with EmbeddedNats() as server:
        yield server.url


@pytest_asyncio.fixture(scope="module")
async def fresh_database(postgres_url: str) -> AsyncIterator[FreshDatabase]:
    """Factory of new, empty databases on the session's server, dropped after the module."""
    created: list[str] = []

    async def make(prefix: str) -> str:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"database prefix must match {_PREFIX.pattern}: {prefix!r}")
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        await _create_database(postgres_url, name)
        created.append(name)
        return database_url(postgres_url, name)

    yield make

    for name in created:
        await drop_database(postgres_url, name)


async def _delete_all_streams(js: JetStreamContext) -> None:
    # The list is paged; deleting shifts the pages, so always re-read from the start.
    while streams := await js.streams_info():
        for stream in streams:
            name = stream.config.name
            if name is None:  # pragma: no cover - the server always names streams
                raise RuntimeError(f"JetStream listed a stream without a name: {stream}")
            await js.delete_stream(name)


@pytest_asyncio.fixture
async def jetstream(nats_url: str) -> AsyncIterator[Nats]:
    """A NATS connection with JetStream, on a server that has no streams at test start."""
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream()
        await _delete_all_streams(js)
        yield Nats(nc=nc, js=js)
    finally:
        await nc.close()


@pytest.fixture
def unique_id() -> str:
    """A short unique string (12 hex digits) for test data."""
    return uuid.uuid4().hex[:12]


#: Fixtures that start or reach real servers: a test that uses one is an integration test.
_SERVER_FIXTURES = frozenset({"postgres_url", "nats_url", "fresh_database", "jetstream"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs real PostgreSQL / NATS (applied automatically)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use a server fixture, so ``-m "not integration"`` runs the fast ones."""
    for item in items:
        if _SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
