"""The expiry job's entrypoints: the ``expire-points`` ops command and the periodic
component of the relay role."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime

import asyncpg
import structlog
from kit.cli import Command
from kit.db import DB_UNAVAILABLE
from kit.lifecycle import Component, every

from points.entrypoints.ops import Connect
from points.service_layer.expiry import (
    DEFAULT_BATCH,
    DEFAULT_REMINDER_DAYS,
    expire_all,
    remind_all,
)

log = structlog.get_logger(__name__)


def expiry_commands(
    connect: Connect, reminder_days: int = DEFAULT_REMINDER_DAYS
) -> dict[str, Command]:
    async def expire_points(args: Sequence[str]) -> int:
        """``expire-points``: expire every lot due now and remind of the lots expiring within
        ``reminder_days``; prints what it did (JSON)."""
        if args:
            sys.stderr.write("usage: expire-points\n")
            return 2
        now = datetime.now(UTC)
        async with connect() as conn:
            run = await expire_all(conn, now, DEFAULT_BATCH)
            reminded = await remind_all(conn, now, reminder_days, DEFAULT_BATCH)
        assert run is not None
        sys.stdout.write(json.dumps(asdict(run) | {"reminded": reminded}) + "\n")
        return 0

    return {"expire-points": expire_points}


def expiry_job(
    pool: asyncpg.Pool, interval_s: float, reminder_days: int = DEFAULT_REMINDER_DAYS
) -> Component:
    """Every ``interval_s``: expire due lots, then remind of the lots expiring within
    ``reminder_days``, on one replica at a time (advisory lock)."""

    async def tick() -> None:
        async with pool.acquire() as conn:
            now = datetime.now(UTC)
            done = await expire_all(conn, now, exclusive=True)
            reminded = await remind_all(conn, now, reminder_days, exclusive=True)
        if reminded:
            log.info("points_expiry_reminded", lots=reminded)
        if done is None:
            log.debug("points_expiry_skipped", reason="another replica runs it")
        elif done.lots:
            log.info("points_expired", **asdict(done))

    async def run(stop: asyncio.Event) -> None:
        await every(
            stop,
            interval_s,
            tick,
            failed_event="points_expiry_failed",
            transient=DB_UNAVAILABLE,
            heartbeat="points-expiry",
        )

    return run
