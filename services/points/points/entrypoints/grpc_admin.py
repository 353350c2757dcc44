"""Ops gRPC for points: earning rules and reconciliation."""

from __future__ import annotations

import zoneinfo
from datetime import date, datetime, time, timedelta
from typing import Any

import asyncpg
from kit.errors import InvalidInput
from kit.proto import timestamp, to_datetime
from mall.common.v1 import common_pb2
from mall.points.v1 import points_pb2, points_service_pb2, points_service_pb2_grpc

from points.adapters import reconciliation, rules
from points.domain.rules import EarningRule, Rounding
from points.domain.wechat_sync import DEFAULT_TIME_ZONE

MAX_PAGE = 100


_ROUNDINGS_OUT = {
    Rounding.DOWN: points_pb2.ROUNDING_DOWN,
    Rounding.HALF_UP: points_pb2.ROUNDING_HALF_UP,
    Rounding.UP: points_pb2.ROUNDING_UP,
}
_ROUNDINGS_IN = {v: k for k, v in _ROUNDINGS_OUT.items()}


def _rule_from(msg: points_pb2.EarningRule) -> EarningRule:
    """The wire rule as a domain rule (version and updated_at are the server's)."""
    if any(s == common_pb2.PAYMENT_SOURCE_UNSPECIFIED for s in msg.sources):
        raise InvalidInput("invalid_source", "sources may not hold PAYMENT_SOURCE_UNSPECIFIED")
    try:
        sources = frozenset(common_pb2.PaymentSource.Name(s) for s in msg.sources)
    except ValueError:
        raise InvalidInput("invalid_source", "sources holds an unknown PaymentSource") from None
    rule = EarningRule(
        mall_id=msg.mall_id,
        rule_id=msg.rule_id,
        name=msg.name,
        tier_code=msg.tier_code,
        tenant_id=msg.tenant_id,
        tenant_category=msg.tenant_category,
        sources=sources,
        spend_unit_fen=msg.spend_unit_fen,
        points_per_unit=msg.points_per_unit,
        min_amount_fen=msg.min_amount_fen,
        priority=msg.priority,
        starts_at=to_datetime(msg.starts_at) if msg.HasField("starts_at") else None,
        ends_at=to_datetime(msg.ends_at) if msg.HasField("ends_at") else None,
        multiplier_percent=msg.multiplier_percent,
        bonus_points=msg.bonus_points,
        budget_points=msg.budget_points,
        daily_cap_points=msg.daily_cap_points,
        rounding=_ROUNDINGS_IN.get(msg.rounding, Rounding.DOWN),
    )
    rule.validate()
    return rule


def _rule_to(rule: EarningRule) -> points_pb2.EarningRule:
    msg = points_pb2.EarningRule(
        mall_id=rule.mall_id,
        rule_id=rule.rule_id,
        name=rule.name,
        tier_code=rule.tier_code,
        tenant_id=rule.tenant_id,
        tenant_category=rule.tenant_category,
        sources=[common_pb2.PaymentSource.Value(s) for s in sorted(rule.sources)],
        spend_unit_fen=rule.spend_unit_fen,
        points_per_unit=rule.points_per_unit,
        min_amount_fen=rule.min_amount_fen,
        priority=rule.priority,
        version=rule.version,
        multiplier_percent=rule.multiplier_percent,
        bonus_points=rule.bonus_points,
        budget_points=rule.budget_points,
        daily_cap_points=rule.daily_cap_points,
        rounding=_ROUNDINGS_OUT[rule.rounding],
    )
    if rule.starts_at is not None:
        msg.starts_at.CopyFrom(timestamp(rule.starts_at))
    if rule.ends_at is not None:
        msg.ends_at.CopyFrom(timestamp(rule.ends_at))
    if rule.recorded_at is not None:
        msg.updated_at.CopyFrom(timestamp(rule.recorded_at))
    return msg


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

    async def PutEarningRule(
        self, request: points_service_pb2.PutEarningRuleRequest, context: Any
    ) -> points_service_pb2.PutEarningRuleResponse:
        if not request.HasField("rule"):
            raise InvalidInput("missing_field", "rule is required")
        rule = _rule_from(request.rule)
        async with self._pool.acquire() as conn, conn.transaction():
            stored = await rules.put_rule(conn, rule)
        return points_service_pb2.PutEarningRuleResponse(rule=_rule_to(stored))

    async def ListEarningRules(
        self, request: points_service_pb2.ListEarningRulesRequest, context: Any
    ) -> points_service_pb2.ListEarningRulesResponse:
        if not request.mall_id:
            raise InvalidInput("missing_field", "mall_id is required")
        size = request.page.page_size or 20
        if not 0 < size <= MAX_PAGE:
            raise InvalidInput("invalid_page_size", f"page_size must be 1..{MAX_PAGE}")
        async with self._pool.acquire() as conn:
            found = await rules.current_rules(
                conn, request.mall_id, after=request.page.page_token, limit=size + 1
            )
        page, more = found[:size], len(found) > size
        return points_service_pb2.ListEarningRulesResponse(
            rules=[_rule_to(r) for r in page],
            page=common_pb2.PageResponse(next_page_token=page[-1].rule_id if more else ""),
        )

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
