"""ParkingService: plates and the shopper's current stay, for the gateway. Translation only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from mall.parking.v1 import parking_pb2, parking_service_pb2_grpc
from mall.parking.v1 import parking_service_pb2 as api

from parking.adapters import plates, sessions
from parking.adapters import quotes as quote_sql
from parking.domain.plates import validate_plate
from parking.entrypoints import messages as m
from parking.service_layer import quotes as quoting
from parking.service_layer.config_cache import ConfigCache
from parking.service_layer.plates import bind_plate, new_plate, unbind_plate


class ParkingServicer(parking_service_pb2_grpc.ParkingServiceServicer):
    def __init__(self, pool: asyncpg.Pool, config: ConfigCache) -> None:
        self._pool = pool
        self._config = config

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
