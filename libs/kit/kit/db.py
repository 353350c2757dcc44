"""asyncpg pool: opened by the composition root, never at import."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from asyncpg.pool import PoolConnectionProxy

#: What handlers receive: a plain connection or one borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection needs on its way back to the pool: nothing beyond what asyncpg always
    does (roll back an open transaction, drop listener callbacks). The default reset adds a
    round trip per borrow (``RESET ALL; UNLISTEN *; pg_advisory_unlock_all(); CLOSE ALL``)
    for session state this code never leaves behind: no session ``SET``s, no cursors held past
    a transaction, advisory locks transaction-scoped (migrations lock on their own connection)
    and the outbox relay UNLISTENs before it gives its connection back."""


@contextlib.asynccontextmanager
async def open_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, application_name: str = "mall"
) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"application_name": application_name, "timezone": "UTC"},
        reset=_keep_session,
    )
    try:
        yield pool
    finally:
        await pool.close()


#: What a database that is away or restarting raises: a job or worker tries again later.
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, asyncpg.PostgresError)
_NO_ANSWER: tuple[type[BaseException], ...] = (*DB_UNAVAILABLE, TimeoutError)


async def ping(pool: asyncpg.Pool) -> bool:
    """True when the database answers; used by the health check."""
    try:
        async with pool.acquire(timeout=2) as conn:
            return bool(await conn.fetchval("SELECT true", timeout=2))
    except _NO_ANSWER:
        return False
