"""Races made deterministic: one transaction held open until another waits on its locks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


async def while_open(
    pool: asyncpg.Pool, first: Callable[[Any], Awaitable[Any]], then: Awaitable[T]
) -> T:
    """Run ``first(conn)`` in a transaction held open until ``then`` (on a connection of its
    own) waits on a lock that transaction holds (``pg_blocking_pids``); then commit it and let
    ``then`` finish. Fails if ``then`` finished without waiting: the race was not there."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await first(conn)
            task = asyncio.ensure_future(then)
            while not task.done():
                waiting = await pool.fetchval(
                    """SELECT EXISTS (SELECT 1 FROM pg_locks
                                       WHERE NOT granted AND $1 = ANY(pg_blocking_pids(pid)))""",
                    conn.get_server_pid(),
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert not task.done(), "it went ahead without waiting for the other to commit"
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()
    return await task
