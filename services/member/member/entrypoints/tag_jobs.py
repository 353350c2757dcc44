"""Rule tags outside the gRPC API: consumers of member's own ``member.payment.attributed``
and ``member.refund.attributed`` (re-evaluate the payer), the periodic job of the relay role
(windows running out) and the ``evaluate-tag-rules`` ops command."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import structlog
from eventbus.consumer import Delivery
from kit.cli import Command
from kit.db import DB_UNAVAILABLE, Connection
from kit.lifecycle import Component, every
from mall.member.v1 import events_pb2

from member.service_layer.tag_rules import evaluate_all, tag_payers

log = structlog.get_logger(__name__)

PAYMENT_ATTRIBUTED = "member.payment.attributed"
REFUND_ATTRIBUTED = "member.refund.attributed"


async def on_payment_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    payers = []
    for d in deliveries:
        msg = d.decode(events_pb2.PaymentAttributed)
        payers.append((msg.mall_id, msg.member_id))
    await tag_payers(conn, payers)


async def on_refund_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """A refund lowers the spend a rule counts: its tag may come off at once."""
    refunded = []
    for d in deliveries:
        msg = d.decode(events_pb2.RefundAttributed)
        refunded.append((msg.mall_id, msg.member_id))
    await tag_payers(conn, refunded)


def tag_rules_job(pool: asyncpg.Pool, interval_s: float) -> Component:
    """Every ``interval_s``: evaluate every mall's rules, one replica per mall at a time."""

    async def tick() -> None:
        async with pool.acquire() as conn:
            await evaluate_all(conn, datetime.now(UTC), exclusive=True)

    async def run(stop: asyncio.Event) -> None:
        await every(
            stop,
            interval_s,
            tick,
            failed_event="tag_rules_evaluation_failed",
            transient=DB_UNAVAILABLE,
            heartbeat="member-tag-rules",
        )

    return run


def tag_rule_commands(pool: asyncpg.Pool) -> dict[str, Command]:
    async def evaluate(args: Sequence[str]) -> int:
        """``evaluate-tag-rules``: evaluate every mall's rules now; prints the mall count."""
        if args:
            sys.stderr.write("usage: evaluate-tag-rules\n")
            return 2
        async with pool.acquire() as conn:
            malls = await evaluate_all(conn, datetime.now(UTC))
        sys.stdout.write(json.dumps({"malls": malls}) + "\n")
        return 0

    return {"evaluate-tag-rules": evaluate}
