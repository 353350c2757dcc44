"""ParkingService: plates, the shopper's current stay, today's benefits and settling before
leaving, for the gateway. Translation only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from kit.proto import timestamp
from mall.parking.v1 import parking_pb2, parking_service_pb2_grpc
from mall.parking.v1 import parking_service_pb2 as api

from parking.adapters import plates, sessions
from parking.adapters import quotes as quote_sql
from parking.domain.plates import validate_plate
from parking.entrypoints import messages as m
from parking.entrypoints.followups import HoldFollowUps
from parking.service_layer import allowance, prepay
from parking.service_layer import quotes as quoting
from parking.service_layer.config_cache import ConfigCache
from parking.service_layer.plates import bind_plate, new_plate, unbind_plate
from parking.service_layer.ports import PointsPort


class ParkingServicer(parking_service_pb2_grpc.ParkingServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: ConfigCache,
        points: PointsPort | None = None,
        *,
        prepaid_grace: timedelta = timedelta(minutes=15),
    ) -> None:
        self._pool = pool
        self._config = config
        self._points = points
        self._grace = prepaid_grace
        self._followups = HoldFollowUps(pool, points)

    async def BindPlate(self, request: api.BindPlateRequest, context: Any) -> api.BindPlateResponse:
        m.required(mall_id=request.mall_id)
        member_id = m.member_id(request.member_id)
        number, color = m.plate(request.plate_number, request.plate_color, color_required=True)
        assert color is not None
        wanted = new_plate(
            request.mall_id,
            member_id,
            number,
            color.value,
            pay_with_points=request.pay_with_points,
            appid=request.appid,
            openid=request.openid,
            now=datetime.now(UTC),
        )
        async with self._pool.acquire() as conn:
            row = await bind_plate(conn, wanted)
        return api.BindPlateResponse(plate=m.plate_message(row))

    async def UnbindPlate(
        self, request: api.UnbindPlateRequest, context: Any
    ) -> api.UnbindPlateResponse:
        m.required(mall_id=request.mall_id)
        member_id = m.member_id(request.member_id)
        number = validate_plate(request.plate_number, None)
        async with self._pool.acquire() as conn:
            await unbind_plate(conn, request.mall_id, member_id, number)
        return api.UnbindPlateResponse()

    async def ListPlates(
        self, request: api.ListPlatesRequest, context: Any
    ) -> api.ListPlatesResponse:
        m.required(mall_id=request.mall_id)
        member_id = m.member_id(request.member_id)
        async with self._pool.acquire() as conn:
            rows = await plates.for_member(conn, request.mall_id, member_id)
        return api.ListPlatesResponse(plates=[m.plate_message(r) for r in rows])

    async def GetSessionForMember(
        self, request: api.GetSessionForMemberRequest, context: Any
    ) -> api.GetSessionForMemberResponse:
        m.required(mall_id=request.mall_id)
        member_id = m.member_id(request.member_id)
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn:
            owned = await plates.for_member(conn, request.mall_id, member_id)
            if not owned:
                return api.GetSessionForMemberResponse()
            session = await sessions.find_open_for_plates(
                conn, request.mall_id, [p.plate_number for p in owned]
            )
            if session is None:
                return api.GetSessionForMemberResponse()
            priced, version, minutes = await quoting.preview(conn, self._config, session, now)
        preview = parking_pb2.ExitQuote(
            session_id=session.session_id,
            parked_minutes=minutes,
            gross_fee_fen=priced.gross_fen,
            discount_fen=priced.discount_fen,
            payable_fen=priced.payable_fen,
            benefits=m.benefits_messages(quote_sql.benefit_lines(priced.applied)),
            schedule_version=version,
        )
        preview.quoted_at.FromDatetime(now)
        return api.GetSessionForMemberResponse(session=m.session_message(session), preview=preview)

    async def GetMemberBenefits(
        self, request: api.GetMemberBenefitsRequest, context: Any
    ) -> api.GetMemberBenefitsResponse:
        m.required(mall_id=request.mall_id)
        member_id = m.member_id(request.member_id)
        async with self._pool.acquire() as conn:
            today = await allowance.member_benefits(
                conn, self._config, request.mall_id, member_id, datetime.now(UTC)
            )
        next_fen, next_minutes = today.next_step
        policy = today.policy
        return api.GetMemberBenefitsResponse(
            business_day=today.business_day.isoformat(),
            valid_until=timestamp(today.valid_until),
            tier_code=today.tier_code,
            tier_free_minutes=today.tier_minutes,
            spend_today_fen=today.spend_fen,
            spend_free_minutes=today.spend_minutes,
            next_step_spend_fen=next_fen,
            next_step_free_minutes=next_minutes,
            spend_max_minutes=policy.spend_max_minutes if policy.spend_step_fen > 0 else 0,
            coupons=[
                api.ParkingHourCoupon(
                    coupon_id=c.coupon_id,
                    free_minutes=c.minutes,
                    valid_until=timestamp(c.valid_until) if c.valid_until else None,
                )
                for c in today.coupons
            ],
            points_per_hour=policy.points_per_hour if policy.points_enabled else 0,
            points_max_hours=policy.points_max_hours if policy.points_enabled else 0,
            free_minutes_today=today.free_minutes,
        )

    async def GetPaymentBenefit(
        self, request: api.GetPaymentBenefitRequest, context: Any
    ) -> api.GetPaymentBenefitResponse:
        m.required(mall_id=request.mall_id, transaction_id=request.transaction_id)
        member_id = m.member_id(request.member_id)
        async with self._pool.acquire() as conn:
            found = await allowance.payment_benefit(
                conn, self._config, request.mall_id, member_id, request.transaction_id
            )
        return api.GetPaymentBenefitResponse(
            free_minutes=found.free_minutes,
            business_day=found.business_day.isoformat(),
            spend_before_fen=found.spend_before_fen,
            spend_after_fen=found.spend_after_fen,
        )

    async def QuoteMemberExit(
        self, request: api.QuoteMemberExitRequest, context: Any
    ) -> api.QuoteMemberExitResponse:
        m.required(mall_id=request.mall_id)
        member_id = m.member_id(request.member_id)
        quoted, release = await prepay.quote_member(
            self._pool,
            self._config,
            self._points,
            mall_id=request.mall_id,
            member_id=member_id,
            use_points=request.use_points,
            request_id=request.request_id[:200],
            now=datetime.now(UTC),
        )
        if release:
            self._followups.after(request.mall_id, quoted.session.session_id)
        return api.QuoteMemberExitResponse(
            session=m.session_message(quoted.session), quote=m.quote_message(quoted.quote)
        )

    async def SettleMemberExit(
        self, request: api.SettleMemberExitRequest, context: Any
    ) -> api.SettleMemberExitResponse:
        m.required(
            mall_id=request.mall_id, session_id=request.session_id, quote_id=request.quote_id
        )
        member_id = m.member_id(request.member_id)
        async with self._pool.acquire() as conn:
            done = await prepay.settle_member(
                conn,
                mall_id=request.mall_id,
                member_id=member_id,
                session_id=request.session_id,
                quote_id=request.quote_id,
                request_id=request.request_id[:200],
                now=datetime.now(UTC),
                grace=self._grace,
            )
        if done.holds_decided:
            self._followups.after(request.mall_id, done.session.session_id)
        assert done.session.prepaid_until is not None
        return api.SettleMemberExitResponse(
            session=m.session_message(done.session),
            quote=m.quote_message(done.quote),
            leave_by=timestamp(done.session.prepaid_until),
        )
