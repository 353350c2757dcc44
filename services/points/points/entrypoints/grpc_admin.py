"""Ops gRPC for points: reconciliation (earning-rule RPCs come with the rules work)."""

from __future__ import annotations

import zoneinfo
from datetime import date, datetime, time, timedelta
from typing import Any

import asyncpg
from kit.errors import InvalidInput
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc

from points.adapters import reconciliation
from points.domain.wechat_sync import DEFAULT_TIME_ZONE


def business_day(value: str, time_zone: str = DEFAULT_TIME_ZONE) -> tuple[datetime, datetime]:
    """A business date's [start, end) in UTC-aware datetimes, midnight to midnight locally."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidInput("invalid_business_date", "business_date is YYYY-MM-DD") from None
    zone = zoneinfo.ZoneInfo(time_zone)
    start = datetime.combine(day, time.min, tzinfo=zone)
    return start, datetime.combine(day + timedelta(days=1), time.min, tzinfo=zone)


class PointsAdminServicer(points_service_pb2_grpc.PointsAdminServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def GetReconciliation(
        self, request: points_service_pb2.GetReconciliationRequest, context: Any
    ) -> points_service_pb2.GetReconciliationResponse:
        if not request.mall_id:
            raise InvalidInput("missing_field", "mall_id is required")
        start, end = business_day(request.business_date)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            totals = await reconciliation.day_totals(conn, request.mall_id, start, end)
            checked, unbalanced = await reconciliation.unbalanced_accounts(conn, request.mall_id)
        return points_service_pb2.GetReconciliationResponse(
            mall_id=request.mall_id,
            business_date=request.business_date,
            payments_credited=totals.payments_credited,
            points_credited=totals.points_credited,
            points_reversed=totals.points_reversed,
            points_redeemed=totals.points_redeemed,
            points_expired=totals.points_expired,
            points_adjusted=totals.points_adjusted,
            sync_succeeded=totals.sync_succeeded,
            sync_pending=totals.sync_pending,
            sync_failed=totals.sync_failed,
            accounts_checked=checked,
            unbalanced_member_ids=unbalanced,
        )
