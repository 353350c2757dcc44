"""The coupon expiry job's entrypoints: the ``expire-coupons`` ops command and the periodic
component of the relay role (one replica at a time, each coupon once)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog
from kit.cli import Command
from kit.db import DB_UNAVAILABLE, Connection
from kit.lifecycle import Component, every

from coupons.service_layer.expiry import DEFAULT_REMINDER, run_expiry

log = structlog.get_logger(__name__)

Connect = Callable[[], AbstractAsyncContextManager[Connection]]


def expiry_commands(
    connect: Connect, remind_before: timedelta = DEFAULT_REMINDER
) -> dict[str, Command]:
    async def expire_coupons(args: Sequence[str]) -> int:
        """``expire-coupons``: expire the coupons due now and remind of those expiring soon."""
        if args:
            sys.stderr.write("usage: expire-coupons\n")
            return 2
        async with connect() as conn:
            done = await run_expiry(conn, datetime.now(UTC), remind_before=remind_before)
        sys.stdout.write(json.dumps(asdict(done) if done else {}) + "\n")
        return 0

    return {"expire-coupons": expire_coupons}


def expiry_job(
    pool: asyncpg.Pool, interval_s: float, remind_before: timedelta = DEFAULT_REMINDER
) -> Component:
    async def tick() -> None:
        async with pool.acquire() as conn:
            done = await run_expiry(
                conn, datetime.now(UTC), remind_before=remind_before, exclusive=True
            )
        if done is None:
            log.debug("coupon_expiry_skipped", reason="another replica runs it")
        elif done.expired or done.reminded:
            log.info("coupons_expired", **asdict(done))

    async def run(stop: asyncio.Event) -> None:
        await every(
            stop,
            interval_s,
            tick,
            failed_event="coupon_expiry_failed",
            transient=DB_UNAVAILABLE,
            heartbeat="coupons-expiry",
        )

    return run
