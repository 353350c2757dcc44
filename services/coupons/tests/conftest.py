"""coupons' test fixtures: each test module gets a coupons database of its own, migrated."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from coupons.bootstrap import MIGRATIONS
from kit.migrations import migrate
from mall_testing.plugin import FreshDatabase


@pytest.fixture(scope="module")
async def url(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture(scope="module")
async def pool(url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(url, min_size=2, max_size=12) as pool:
        yield pool
