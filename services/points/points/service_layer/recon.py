"""Reconcile one mall's payments over a window: gather what every side recorded (the
platform, the PAYMENTS and MEMBER streams, points' own tables) and compare."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from kit.errors import InvalidInput
from nats.js.client import JetStreamContext

from points.adapters import recon_tables, reconciliation
from points.adapters.recon_platform import PlatformRecord
from points.adapters.recon_streams import read_streams
from points.domain.recon import (
    Difference,
    Evidence,
    Stage,
    compare,
    payments_in_window,
    refunds_in_window,
)

#: The sides are read from this long before the window, so a payment first seen just before
#: it by one side is recognised when a later side records it inside the window.
MARGIN = timedelta(hours=1)
MAX_WINDOW = timedelta(days=31)

#: The platform's record from ``since`` to ``until``, or None when none is configured.
Platform = Callable[[datetime, datetime], Awaitable[PlatformRecord]]


@dataclass(frozen=True)
class SourceCount:
    name: str
    payments: int
    refunds: int
    consulted: bool = True
    note: str = ""


@dataclass(frozen=True)
class Report:
    mall_id: str
    start: datetime
    end: datetime
    differences: list[Difference]
    sources: list[SourceCount]
    payments_checked: int
    refunds_checked: int

    @property
    def green(self) -> bool:
        return not self.differences


def check_window(mall_id: str, start: datetime, end: datetime) -> None:
    if not mall_id:
        raise InvalidInput("missing_field", "mall_id is required")
    if end <= start:
        raise InvalidInput("invalid_window", "end_time must be after start_time")
    if end - start > MAX_WINDOW:
        raise InvalidInput("invalid_window", f"a window is at most {MAX_WINDOW.days} days")


def _count(side: Mapping[str, object] | None, keys: list[str]) -> int:
    return 0 if side is None else sum(1 for k in keys if k in side)


async def reconcile(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    mall_id: str,
    start: datetime,
    end: datetime,
    *,
    platform: Platform | None = None,
) -> Report:
    check_window(mall_id, start, end)
    since = start - MARGIN
    streams = await read_streams(js, mall_id, since)
    evidence = Evidence(
        captured=streams.captured,
        captured_refunds=streams.captured_refunds,
        attributed=streams.attributed,
        attributed_refunds=streams.attributed_refunds,
    )
    platform_note = "not configured (WECHATPAY_BILL_URL is not set)"
    if platform is not None:
        bill = await platform(since, datetime.now(UTC))
        mine = set(streams.captured) | set(streams.attributed)
        evidence.platform_payments = {
            tx: p for tx, p in bill.payments.items() if tx in mine or p.appid in streams.appids
        }
        evidence.platform_refunds = {
            r: f for r, f in bill.refunds.items() if f.transaction_id in evidence.platform_payments
        }
        evidence.platform_syncs = bill.syncs
        platform_note = ""
    payments = payments_in_window(evidence, start, end)
    refunds = refunds_in_window(evidence, start, end)
    refunded = [
        r.transaction_id
        for side in (evidence.captured_refunds, evidence.attributed_refunds)
        for r in side.values()
    ]
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        evidence.credits = await recon_tables.credits(conn, mall_id, payments, start, end)
        evidence.reversals = await recon_tables.reversals(conn, mall_id, refunds)
        evidence.syncs = await recon_tables.syncs(conn, mall_id, [*payments, *refunded])
        _, evidence.unbalanced_members = await reconciliation.unbalanced_accounts(conn, mall_id)
    sources = [
        SourceCount(
            Stage.PLATFORM,
            _count(evidence.platform_payments, payments),
            _count(evidence.platform_refunds, refunds),
            consulted=platform is not None,
            note=platform_note,
        ),
        SourceCount(
            Stage.GATEWAY,
            _count(evidence.captured, payments),
            _count(evidence.captured_refunds, refunds),
        ),
        SourceCount(
            Stage.MEMBER,
            _count(evidence.attributed, payments),
            _count(evidence.attributed_refunds, refunds),
        ),
        SourceCount(
            Stage.POINTS,
            sum(len(evidence.credits[tx]) for tx in payments if tx in evidence.credits),
            len(evidence.reversals),
        ),
        SourceCount(
            Stage.SYNC,
            sum(
                1
                for tx in payments
                if (s := evidence.syncs.get((tx, "credit"))) and s.state == "SENT"
            ),
            sum(1 for (_, k), s in evidence.syncs.items() if k == "reversal" and s.state == "SENT"),
        ),
    ]
    return Report(
        mall_id,
        start,
        end,
        compare(evidence, start, end),
        sources,
        len(payments),
        len(refunds),
    )
