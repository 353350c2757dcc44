"""kit.db: the pool every service borrows from, with its light reset."""

from __future__ import annotations

from kit.db import open_pool
from mall_testing.plugin import FreshDatabase


async def test_a_connection_given_back_mid_transaction_comes_back_clean(
    fresh_database: FreshDatabase,
) -> None:
    dsn = await fresh_database("kit_db")
    async with open_pool(dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (v int)")
        # A handler that failed half-way: its transaction is neither committed nor rolled back.
        conn = await pool.acquire()
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO t VALUES (1)")
        await pool.release(conn)

        async with pool.acquire() as again:  # the same (only) connection
            assert not again.is_in_transaction()
            assert await again.fetchval("SELECT count(*) FROM t") == 0
            assert await again.fetchval("SHOW timezone") == "UTC"  # the pool's own settings stay
