"""ParkingAdminService: fee schedules, the mall's policy, sessions, anomalies and figures."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from kit.errors import InvalidInput, NotFound
from kit.proto import timestamp
from mall.parking.v1 import parking_pb2, parking_service_pb2_grpc
from mall.parking.v1 import parking_service_pb2 as api

from parking.adapters import anomalies, directory, figures, sessions, tariffs, wechat_calls
from parking.domain.benefits import ParkingPolicy
from parking.domain.fees import FeeSchedule
from parking.entrypoints import messages as m
from parking.service_layer.config_cache import ConfigCache
from parking.service_layer.quotes import day_start

_SYNC_KINDS = {
    name.removeprefix("SYNC_KIND_").lower(): number
    for name, number in parking_pb2.SyncKind.items()
    if number
}
_SYNC_STATES = {
    name.removeprefix("SYNC_STATE_").lower(): number
    for name, number in parking_pb2.SyncState.items()
    if number
}


def schedule_message(
    mall_id: str, car_park_id: str, s: FeeSchedule, at: datetime
) -> parking_pb2.FeeSchedule:
    msg = parking_pb2.FeeSchedule(
        mall_id=mall_id,
        car_park_id=car_park_id,
        free_minutes=s.free_minutes,
        unit_minutes=s.unit_minutes,
        unit_fee_fen=s.unit_fee_fen,
        daily_cap_fen=s.daily_cap_fen,
        version=s.version,
        updated_at=timestamp(at),
        night_start_minute=s.night_start_minute,
        night_end_minute=s.night_end_minute,
        night_unit_fee_fen=s.night_unit_fee_fen,
        missing_entry_fee_fen=s.missing_entry_fee_fen,
    )
    if s.effective_from is not None:
        msg.effective_from.CopyFrom(timestamp(s.effective_from))
    return msg


def policy_message(
    mall_id: str, p: ParkingPolicy, at: datetime | None
) -> parking_pb2.ParkingPolicy:
    msg = parking_pb2.ParkingPolicy(
        mall_id=mall_id,
        max_plates_per_member=p.max_plates_per_member,
        tier_benefits=[
            parking_pb2.TierBenefit(tier_code=code, free_minutes=minutes)
            for code, minutes in sorted(p.tier_minutes.items())
        ],
        spend_step_fen=p.spend_step_fen,
        spend_step_minutes=p.spend_step_minutes,
        spend_max_minutes=p.spend_max_minutes,
        points_per_hour=p.points_per_hour,
        points_max_hours=p.points_max_hours,
        quote_valid_minutes=p.quote_valid_minutes,
        version=p.version,
    )
    if at is not None:
        msg.updated_at.CopyFrom(timestamp(at))
    return msg


class ParkingAdminServicer(parking_service_pb2_grpc.ParkingAdminServiceServicer):
    def __init__(self, pool: asyncpg.Pool, config: ConfigCache) -> None:
        self._pool = pool
        self._config = config

    async def PutFeeSchedule(
        self, request: api.PutFeeScheduleRequest, context: Any
    ) -> api.PutFeeScheduleResponse:
        s = request.schedule
        m.required(mall_id=s.mall_id, car_park_id=s.car_park_id)
        schedule = FeeSchedule(
            free_minutes=s.free_minutes,
            unit_minutes=s.unit_minutes,
            unit_fee_fen=s.unit_fee_fen,
            daily_cap_fen=s.daily_cap_fen,
            night_start_minute=s.night_start_minute,
            night_end_minute=s.night_end_minute,
            night_unit_fee_fen=s.night_unit_fee_fen,
            missing_entry_fee_fen=s.missing_entry_fee_fen,
            effective_from=m.when(s.effective_from) if s.HasField("effective_from") else None,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            stored, at = await tariffs.add_schedule(
                conn, s.mall_id, s.car_park_id, schedule, datetime.now(UTC)
            )
        self._config.invalidate(s.mall_id)
        return api.PutFeeScheduleResponse(
            schedule=schedule_message(s.mall_id, s.car_park_id, stored, at)
        )

    async def ListFeeSchedules(
        self, request: api.ListFeeSchedulesRequest, context: Any
    ) -> api.ListFeeSchedulesResponse:
        m.required(mall_id=request.mall_id, car_park_id=request.car_park_id)
        async with self._pool.acquire() as conn:
            found = await tariffs.list_schedules(conn, request.mall_id, request.car_park_id)
        return api.ListFeeSchedulesResponse(
            schedules=[
                schedule_message(request.mall_id, request.car_park_id, s, at) for s, at in found
            ]
        )

    async def PutParkingPolicy(
        self, request: api.PutParkingPolicyRequest, context: Any
    ) -> api.PutParkingPolicyResponse:
        p = request.policy
        m.required(mall_id=p.mall_id)
        tiers = {t.tier_code: t.free_minutes for t in p.tier_benefits}
        if len(tiers) != len(p.tier_benefits):
            raise InvalidInput("invalid_policy", "a tier appears twice in tier_benefits")
        policy = ParkingPolicy(
            max_plates_per_member=p.max_plates_per_member or 3,
            tier_minutes=tiers,
            spend_step_fen=p.spend_step_fen,
            spend_step_minutes=p.spend_step_minutes,
            spend_max_minutes=p.spend_max_minutes,
            points_per_hour=p.points_per_hour,
            points_max_hours=p.points_max_hours,
            quote_valid_minutes=p.quote_valid_minutes or 15,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            stored, at = await tariffs.put_policy(conn, p.mall_id, policy)
        self._config.invalidate(p.mall_id)
        return api.PutParkingPolicyResponse(policy=policy_message(p.mall_id, stored, at))

    async def GetParkingPolicy(
        self, request: api.GetParkingPolicyRequest, context: Any
    ) -> api.GetParkingPolicyResponse:
        m.required(mall_id=request.mall_id)
        async with self._pool.acquire() as conn:
            policy, at = await tariffs.get_policy(conn, request.mall_id)
        return api.GetParkingPolicyResponse(policy=policy_message(request.mall_id, policy, at))

    async def GetSession(
        self, request: api.GetSessionRequest, context: Any
    ) -> api.GetSessionResponse:
        m.required(mall_id=request.mall_id, session_id=request.session_id)
        async with self._pool.acquire() as conn:
            session = await sessions.get(conn, request.mall_id, request.session_id)
            if session is None:
                raise NotFound("session_not_found", f"no session {request.session_id}")
            calls = await wechat_calls.for_session(conn, request.mall_id, request.session_id)
            lines = await sessions.session_benefits(conn, request.mall_id, request.session_id)
        syncs = []
        for c in calls:
            sync = parking_pb2.SessionSync(
                kind=_SYNC_KINDS[c.kind],
                state=_SYNC_STATES[c.state],
                attempts=c.attempts,
                last_error=c.last_error,
                platform_ref=c.platform_ref,
            )
            if c.attempted_at is not None:
                sync.attempted_at.CopyFrom(timestamp(c.attempted_at))
            syncs.append(sync)
        return api.GetSessionResponse(
            session=m.session_message(session), syncs=syncs, benefits=m.benefits_messages(lines)
        )

    async def ListAnomalies(
        self, request: api.ListAnomaliesRequest, context: Any
    ) -> api.ListAnomaliesResponse:
        m.required(mall_id=request.mall_id)
        limit = request.limit or 100
        if not 0 < limit <= 500:
            raise InvalidInput("invalid_limit", "limit must be 1..500")
        async with self._pool.acquire() as conn:
            rows = await anomalies.list_anomalies(conn, request.mall_id, request.car_park_id, limit)
        return api.ListAnomaliesResponse(
            anomalies=[api.Anomaly(**{**r, "created_at": timestamp(r["created_at"])}) for r in rows]
        )

    async def GetDailyFigures(
        self, request: api.GetDailyFiguresRequest, context: Any
    ) -> api.GetDailyFiguresResponse:
        m.required(mall_id=request.mall_id, business_day=request.business_day)
        try:
            day = date.fromisoformat(request.business_day)
        except ValueError:
            raise InvalidInput("invalid_business_day", "business_day must be YYYY-MM-DD") from None
        async with self._pool.acquire() as conn:
            mall = await directory.get_mall(conn, request.mall_id)
            tz = ZoneInfo(mall.time_zone)
            start = day_start(datetime(day.year, day.month, day.day, 12, tzinfo=tz), tz)
            end = day_start(start + timedelta(hours=36), tz)
            rows = await figures.daily_figures(conn, request.mall_id, start, end)
        return api.GetDailyFiguresResponse(car_parks=[api.CarParkFigures(**r) for r in rows])
