"""The ledger is read by index, whatever its size when a plan was made.

A consumer's statements are prepared once per connection and their generic plan is kept. A
plan made while the ledger is small (a new mall, a fresh deployment) and sized for a guessed
batch may read every credit in it — and keeps doing so as the ledger grows to millions of rows.
Crediting a payment must read the ledger only through index conditions on the batch's own
keys, even in the generic plan of an empty database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from kit.migrations import migrate
from mall_testing.plugin import FreshDatabase
from points.bootstrap import MIGRATIONS
from points.domain.model import AttributedPayment
from points.service_layer.credits import credit_payments

_READS_LEDGER = re.compile(r"\b(FROM|JOIN)\s+ledger\b", re.IGNORECASE)
_PARAMETER = re.compile(r"\$(\d+)")


@pytest.fixture
async def conn(fresh_database: FreshDatabase) -> AsyncIterator[asyncpg.Connection]:
    url = await fresh_database("points_plans")
    await migrate(url, MIGRATIONS)
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


async def _generic_plan(conn: asyncpg.Connection, name: str, query: str) -> list[str]:
    count = max((int(n) for n in _PARAMETER.findall(query)), default=0)
    await conn.execute(f"PREPARE {name} AS {query}")
    try:
        args = ", ".join(["NULL"] * count)
        rows = await conn.fetch(
            f"EXPLAIN EXECUTE {name}({args})" if count else f"EXPLAIN EXECUTE {name}"
        )
    finally:
        await conn.execute(f"DEALLOCATE {name}")
    return [r[0] for r in rows]


def _unbounded_ledger_scans(plan: list[str]) -> list[str]:
    """Scans of the ledger not bounded by an index condition on the outer row (``t.``)."""
    found = []
    for i, line in enumerate(plan):
        if re.search(r"\bon ledger\b", line) and "Bitmap Index Scan" not in line:
            detail = " ".join(plan[i + 1 : i + 4])
            if "Index Cond" not in detail or "t." not in detail:
                found.append(line.strip())
    return found


async def test_crediting_reads_the_ledger_by_index_even_when_planned_on_an_empty_one(
    conn: asyncpg.Connection,
) -> None:
    statements: list[str] = []

    def log(logged: asyncpg.connection.LoggedQuery) -> None:
        statements.append(logged.query)

    conn.add_query_logger(log)
    payment = AttributedPayment(
        event_id=str(uuid.uuid4()),
        mall_id="mall-plans",
        member_id=str(uuid.uuid4()),
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        tenant_id="coffee-corner",
        amount_fen=8_800,
        paid_at=datetime(2025, 11, 26, 6, 30, tzinfo=UTC),
        appid="wxappid",
        openid="o-shopper",
    )
    async with conn.transaction():
        credits = await credit_payments(conn, [(payment, {})])
    conn.remove_query_logger(log)
    assert [c.points for c in credits] == [88]

    readers = sorted({q for q in statements if _READS_LEDGER.search(q)})
    assert readers, "crediting reads the ledger (duplicate check, daily caps, lots)"
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    unbounded = {}
    for n, query in enumerate(readers):
        scans = _unbounded_ledger_scans(await _generic_plan(conn, f"reader_{n}", query))
        if scans:
            unbounded[" ".join(query.split())[:120]] = scans
    assert unbounded == {}
