"""Ops gRPC ReconciliationService, and the ``reconcile`` ops command (``make reconcile``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
from kit.cli import Command
from kit.errors import InvalidInput
from kit.jetstream import connect
from kit.proto import timestamp, to_datetime
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc

from points.adapters.recon_platform import fetch_bill
from points.domain.recon import Difference
from points.service_layer.recon import Platform, Report, reconcile


def platform_from(bill_url: str, mchid: str) -> Platform | None:
    """The platform's record, when ``WECHATPAY_BILL_URL`` is set."""
    return partial(fetch_bill, bill_url, mchid) if bill_url else None


class Reconciler:
    """Runs a reconciliation on its own short NATS connection (an ops call, not a hot path)."""

    def __init__(self, pool: asyncpg.Pool, nats_url: str, platform: Platform | None) -> None:
        self._pool = pool
        self._nats_url = nats_url
        self._platform = platform

    async def __call__(self, mall_id: str, start: datetime, end: datetime) -> Report:
        async with connect(self._nats_url, name="points-reconcile") as nc:
            return await reconcile(
                self._pool, nc.jetstream(), mall_id, start, end, platform=self._platform
            )


def _difference(d: Difference) -> points_service_pb2.Difference:
    return points_service_pb2.Difference(
        kind=points_service_pb2.DifferenceKind.Value(f"DIFFERENCE_KIND_{d.kind.name}"),
        transaction_id=d.transaction_id,
        refund_id=d.refund_id,
        stage=d.stage.value,
        expected=d.expected,
        actual=d.actual,
        member_id=d.member_id,
    )


def to_response(report: Report) -> points_service_pb2.ReconcilePaymentsResponse:
    return points_service_pb2.ReconcilePaymentsResponse(
        mall_id=report.mall_id,
        start_time=timestamp(report.start),
        end_time=timestamp(report.end),
        differences=[_difference(d) for d in report.differences],
        sources=[
            points_service_pb2.ReconcileSource(
                name=s.name,
                payments=s.payments,
                refunds=s.refunds,
                consulted=s.consulted,
                note=s.note,
            )
            for s in report.sources
        ],
        payments_checked=report.payments_checked,
        refunds_checked=report.refunds_checked,
    )


class ReconciliationServicer(points_service_pb2_grpc.ReconciliationServiceServicer):
    def __init__(self, reconciler: Reconciler) -> None:
        self._reconcile = reconciler

    async def ReconcilePayments(
        self, request: points_service_pb2.ReconcilePaymentsRequest, context: Any
    ) -> points_service_pb2.ReconcilePaymentsResponse:
        if not request.HasField("start_time") or not request.HasField("end_time"):
            raise InvalidInput("missing_field", "start_time and end_time are required")
        report = await self._reconcile(
            request.mall_id, to_datetime(request.start_time), to_datetime(request.end_time)
        )
        return to_response(report)


USAGE = (
    "usage: reconcile MALL_ID [START [END]]\n"
    "  START, END: ISO 8601 times (default: the last 24 hours up to 5 minutes ago)\n"
)


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def reconcile_command(reconciler: Reconciler) -> dict[str, Command]:
    """``reconcile MALL_ID [START [END]]``: JSON lines (sources, then each difference, then a
    summary); exit 0 when green, 1 when there are differences, 2 on bad arguments."""

    async def run(args: Sequence[str]) -> int:
        if not 1 <= len(args) <= 3:
            sys.stderr.write(USAGE)
            return 2
        try:
            end = _when(args[2]) if len(args) > 2 else datetime.now(UTC) - timedelta(minutes=5)
            start = _when(args[1]) if len(args) > 1 else end - timedelta(days=1)
            report = await reconciler(args[0], start, end)
        except (ValueError, InvalidInput) as exc:
            sys.stderr.write(f"{exc}\n{USAGE}")
            return 2

        def line(value: dict[str, Any]) -> None:
            sys.stdout.write(json.dumps(value, default=str, ensure_ascii=False) + "\n")

        for s in report.sources:
            line(
                {"source": s.name, "payments": s.payments, "refunds": s.refunds}
                | ({"note": s.note} if s.note else {})
            )
        for d in report.differences:
            line(
                {
                    "kind": d.kind.value,
                    "transaction_id": d.transaction_id,
                    "refund_id": d.refund_id,
                    "stage": d.stage.value,
                    "expected": d.expected,
                    "actual": d.actual,
                    "member_id": d.member_id,
                }
            )
        line(
            {
                "mall_id": report.mall_id,
                "start": report.start,
                "end": report.end,
                "payments_checked": report.payments_checked,
                "refunds_checked": report.refunds_checked,
                "differences": len(report.differences),
                "green": report.green,
            }
        )
        return 0 if report.green else 1

    return {"reconcile": run}
