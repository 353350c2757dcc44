"""Commitment cards' periodic work and ops commands: the deadline sweep (a component of the
relay role, safe on several replicas), the clawback worker, and ``commitment-sweep``,
``commitment-clawbacks``, ``commitment-clawback-retry``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog
from kit.cli import Command
from kit.db import DB_UNAVAILABLE, Connection
from kit.lifecycle import Component, every

from coupons.adapters import commitment_clawbacks as clawbacks
from coupons.adapters.commitment_payscore import WeChatPayScore
from coupons.commitment_settings import CommitmentSettings
from coupons.service_layer.commitment import sweep
from coupons.service_layer.commitment_clawbacks import ClawbackPolicy, ClawbackWorker

log = structlog.get_logger(__name__)

Connect = Callable[[], AbstractAsyncContextManager[Connection]]


def sweep_job(
    pool: asyncpg.Pool, interval_s: float, remind_before: timedelta, grace: timedelta
) -> Component:
    """Every ``interval_s``: fail cards past their deadline (queueing their clawbacks), then
    remind of cards near it; one replica at a time (advisory lock), each card once."""

    async def tick() -> None:
        async with pool.acquire() as conn:
            done = await sweep(
                conn, datetime.now(UTC), remind_before=remind_before, grace=grace, exclusive=True
            )
        if done is None:
            log.debug("commitment_sweep_skipped", reason="another replica runs it")
        elif any(done):
            log.info("commitment_swept", failed=done[0], reminded=done[1])

    async def run(stop: asyncio.Event) -> None:
        await every(
            stop,
            interval_s,
            tick,
            failed_event="commitment_sweep_failed",
            transient=DB_UNAVAILABLE,
            heartbeat="coupons-commitment-sweep",
        )

    return run


def clawback_job(settings: CommitmentSettings, pool: asyncpg.Pool) -> Component:
    """The clawback worker, or a warning when no platform is configured (clawbacks queue)."""
    client = settings.wechatpay_client()  # a bad key file stops the process at start
    if client is None:

        async def disabled(stop: asyncio.Event) -> None:
            log.warning(
                "commitment_clawbacks_disabled",
                reason="WECHATPAY_API_BASE is not set: clawbacks are queued, not collected",
            )

        return disabled
    policy = ClawbackPolicy(
        lease_s=max(60.0, 2 * (settings.wechatpay_timeout_s + 5)),
        send_timeout_s=settings.wechatpay_timeout_s + 5,
        retry_base_s=settings.clawback_retry_base_s,
        retry_max_s=settings.clawback_retry_max_s,
        poll_interval_s=settings.clawback_poll_interval_s,
    )

    async def run(stop: asyncio.Event) -> None:
        async with client:
            payscore = WeChatPayScore(
                client,
                service_id=settings.payscore_service_id,
                notify_url=settings.payscore_notify_url,
            )
            await ClawbackWorker(pool, payscore, policy=policy).run(stop)

    return run


def commitment_commands(
    connect: Connect, remind_before: timedelta, grace: timedelta
) -> dict[str, Command]:
    async def commitment_sweep(args: Sequence[str]) -> int:
        """``commitment-sweep``: fail due cards and send due reminders now; prints counts."""
        if args:
            sys.stderr.write("usage: commitment-sweep\n")
            return 2
        async with connect() as conn:
            done = await sweep(conn, datetime.now(UTC), remind_before=remind_before, grace=grace)
        failed, reminded = done or (0, 0)
        sys.stdout.write(json.dumps({"failed": failed, "reminded": reminded}) + "\n")
        return 0

    async def list_clawbacks(args: Sequence[str]) -> int:
        """``commitment-clawbacks``: pending and refused clawbacks, one JSON object a line."""
        if args:
            sys.stderr.write("usage: commitment-clawbacks\n")
            return 2
        async with connect() as conn:
            for claw in await clawbacks.list_open(conn):
                sys.stdout.write(json.dumps(claw.as_json(), ensure_ascii=False) + "\n")
        return 0

    async def retry_clawback(args: Sequence[str]) -> int:
        """``commitment-clawback-retry MALL_ID CARD_ID``: send a refused clawback again."""
        if len(args) != 2:
            sys.stderr.write("usage: commitment-clawback-retry MALL_ID CARD_ID\n")
            return 2
        async with connect() as conn:
            done = await clawbacks.retry_refused(conn, args[0], args[1])
        sys.stdout.write(json.dumps({"requeued": done}) + "\n")
        return 0 if done else 1

    return {
        "commitment-sweep": commitment_sweep,
        "commitment-clawbacks": list_clawbacks,
        "commitment-clawback-retry": retry_clawback,
    }
