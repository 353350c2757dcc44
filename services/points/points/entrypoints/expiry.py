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
from kit.lifecycle import Component, sleep_or_stop

from points.entrypoints.ops import Connect
from points.service_layer.expiry import DEFAULT_BATCH, expire_all

log = structlog.get_logger(__name__)


def expiry_commands(connect: Connect) -> dict[str, Command]:
    async def expire_points(args: Sequence[str]) -> int:
        """``expire-points``: expire every lot due now; prints what it did (JSON)."""
        if args:
            sys.stderr.write("usage: expire-points\n")
            return 2
        async with connect() as conn:
            run = await expire_all(conn, datetime.now(UTC), DEFAULT_BATCH)
        assert run is not None
        sys.stdout.write(json.dumps(asdict(run)) + "\n")
        return 0

    return {"expire-points": expire_points}


def expiry_job(pool: asyncpg.Pool, interval_s: float) -> Component:
    """Every ``interval_s``: expire due lots, on one replica at a time (advisory lock)."""

    async def run(stop: asyncio.Event) -> None:
        while True:
            try:
                async with pool.acquire() as conn:
                    done = await expire_all(conn, datetime.now(UTC), exclusive=True)
                if done is None:
                    log.debug("points_expiry_skipped", reason="another replica runs it")
                elif done.lots:
                    log.info("points_expired", **asdict(done))
            except (OSError, asyncpg.PostgresError) as error:  # retried at the next tick
                log.warning("points_expiry_failed", error=str(error))
            if await sleep_or_stop(stop, interval_s):
                return

    return run
