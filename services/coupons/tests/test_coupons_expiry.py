"""Coupon expiry on real PostgreSQL: coupons.coupon.expiring exactly once per coupon 3 days
before it expires, then status expired + coupons.coupon.expired, also with two workers at
once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from coupons.bootstrap import MIGRATIONS
from coupons.entrypoints.expiry import expiry_commands
from coupons.service_layer.expiry import EXPIRY_LOCK, ExpiryRun, run_expiry
from kit.migrations import migrate
from kit.proto import to_datetime
from mall.coupons.v1 import events_pb2
from mall_testing.plugin import FreshDatabase

#: Coupons of these tests are valid until EXPIRES (whole seconds: timestamptz keeps µs anyway).
EXPIRES = datetime(2026, 12, 31, 16, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def pool(fresh_database: FreshDatabase) -> AsyncIterator[asyncpg.Pool]:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    async with asyncpg.create_pool(url, min_size=2, max_size=8) as pool:
        yield pool


async def issue(
    pool: asyncpg.Pool, mall_id: str, count: int, valid_until: datetime = EXPIRES
) -> list[str]:
    """A stock of ``mall_id`` and ``count`` available coupons of it (the core's tables)."""
    stock_id = f"stock-{uuid.uuid4().hex[:8]}"
    coupon_ids = [f"c-{uuid.uuid4().hex}" for _ in range(count)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO stocks (mall_id, stock_id, title, kind, discount_fen, max_coupons,
                                   issuable, claim_starts_at, claim_ends_at, valid_until,
                                   request_id)
               VALUES ($1, $2, '满100减10', 'fixed_amount', 1000, 1000, 1000, $3, $4, $4, $2)
               ON CONFLICT DO NOTHING""",
            mall_id,
            stock_id,
            valid_until - timedelta(days=30),
            valid_until,
        )
        await conn.executemany(
            """INSERT INTO coupons (mall_id, coupon_id, stock_id, member_id, channel, request_id,
                                    valid_from, valid_until)
               VALUES ($1, $2, $3, $4, 'mini_program', $2, $5, $6)""",
            [
                (mall_id, c, stock_id, uuid.uuid4(), valid_until - timedelta(days=30), valid_until)
                for c in coupon_ids
            ],
        )
    return coupon_ids


async def events(pool: asyncpg.Pool, mall_id: str, subject: str) -> list[bytes]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT payload FROM outbox WHERE mall_id = $1 AND subject = $2 ORDER BY seq",
            mall_id,
            subject,
        )
    return [r["payload"] for r in rows]


async def statuses(pool: asyncpg.Pool, mall_id: str) -> dict[str, str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT coupon_id, status FROM coupons WHERE mall_id = $1", mall_id)
    return {r["coupon_id"]: r["status"] for r in rows}


async def run(pool: asyncpg.Pool, now: datetime, **kw: object) -> ExpiryRun | None:
    async with pool.acquire() as conn:
        return await run_expiry(conn, now, **kw)  # type: ignore[arg-type]


@pytest.fixture
def mall_id(unique_id: str) -> str:
    return f"mall-{unique_id}"


async def test_a_coupon_is_reminded_3_days_ahead_once_then_expires_once(
    pool: asyncpg.Pool, mall_id: str
) -> None:
    [coupon] = await issue(pool, mall_id, 1)

    await run(pool, EXPIRES - timedelta(days=3, seconds=1))  # just before the 3 days
    assert await events(pool, mall_id, "coupons.coupon.expiring") == []

    for later in (timedelta(days=3), timedelta(days=2), timedelta(seconds=1)):
        await run(pool, EXPIRES - later)
    reminders = [
        events_pb2.CouponExpiring.FromString(p)
        for p in await events(pool, mall_id, "coupons.coupon.expiring")
    ]
    assert [(r.coupon_id, to_datetime(r.expires_at)) for r in reminders] == [(coupon, EXPIRES)]
    assert (await statuses(pool, mall_id))[coupon] == "available"

    await run(pool, EXPIRES)
    await run(pool, EXPIRES + timedelta(days=1))
    expired = [
        events_pb2.CouponExpired.FromString(p)
        for p in await events(pool, mall_id, "coupons.coupon.expired")
    ]
    assert [e.coupon_id for e in expired] == [coupon]
    assert (await statuses(pool, mall_id))[coupon] == "expired"


async def test_used_and_revoked_coupons_neither_remind_nor_expire(
    pool: asyncpg.Pool, mall_id: str
) -> None:
    used, revoked, kept = await issue(pool, mall_id, 3)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE coupons SET status = 'used' WHERE mall_id = $1 AND coupon_id = $2",
            mall_id,
            used,
        )
        await conn.execute(
            "UPDATE coupons SET status = 'revoked' WHERE mall_id = $1 AND coupon_id = $2",
            mall_id,
            revoked,
        )
    await run(pool, EXPIRES - timedelta(days=1))
    await run(pool, EXPIRES)
    assert await statuses(pool, mall_id) == {used: "used", revoked: "revoked", kept: "expired"}
    for subject in ("coupons.coupon.expiring", "coupons.coupon.expired"):
        assert len(await events(pool, mall_id, subject)) == 1


async def test_a_coupon_found_already_expired_expires_without_a_late_reminder(
    pool: asyncpg.Pool, mall_id: str
) -> None:
    await issue(pool, mall_id, 2)
    done = await run(pool, EXPIRES + timedelta(hours=1))
    assert done is not None
    assert set((await statuses(pool, mall_id)).values()) == {"expired"}
    assert await events(pool, mall_id, "coupons.coupon.expiring") == []
    assert len(await events(pool, mall_id, "coupons.coupon.expired")) == 2


async def test_two_workers_at_once_remind_and_expire_each_coupon_exactly_once(
    pool: asyncpg.Pool, mall_id: str
) -> None:
    coupons = await issue(pool, mall_id, 60, EXPIRES + timedelta(days=400))
    expires = EXPIRES + timedelta(days=400)
    # Small batches, so the two really interleave; several rounds at the same moments.
    for moment in (expires - timedelta(days=2), expires - timedelta(days=1), expires):
        await asyncio.gather(*(run(pool, moment, limit=7) for _ in range(2)))
        await asyncio.gather(*(run(pool, moment, limit=5) for _ in range(2)))

    reminded = [
        events_pb2.CouponExpiring.FromString(p).coupon_id
        for p in await events(pool, mall_id, "coupons.coupon.expiring")
    ]
    expired = [
        events_pb2.CouponExpired.FromString(p).coupon_id
        for p in await events(pool, mall_id, "coupons.coupon.expired")
    ]
    assert sorted(reminded) == sorted(coupons)
    assert sorted(expired) == sorted(coupons)
    assert set((await statuses(pool, mall_id)).values()) == {"expired"}


async def test_an_exclusive_run_skips_while_another_replica_holds_the_job(
    pool: asyncpg.Pool, mall_id: str
) -> None:
    await issue(pool, mall_id, 1, EXPIRES + timedelta(days=800))
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", EXPIRY_LOCK)
        skipped = await run(pool, EXPIRES + timedelta(days=801), exclusive=True)
    assert skipped is None
    assert set((await statuses(pool, mall_id)).values()) == {"available"}


async def test_the_ops_command_expires_what_is_due_now(
    pool: asyncpg.Pool, mall_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    coupons = await issue(pool, mall_id, 2, datetime.now(UTC) - timedelta(minutes=1))
    command = expiry_commands(pool.acquire)["expire-coupons"]
    assert await command([]) == 0
    assert '"expired"' in capsys.readouterr().out
    assert await statuses(pool, mall_id) == dict.fromkeys(coupons, "expired")
    assert await command(["extra"]) == 2
