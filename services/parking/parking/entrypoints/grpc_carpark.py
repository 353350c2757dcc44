"""CarParkService: the car park's gates. Translation only; rules in domain and service_layer."""

from __future__ import annotations

from typing import Any

import asyncpg
from mall.parking.v1 import parking_service_pb2 as api
from mall.parking.v1 import parking_service_pb2_grpc

from parking.entrypoints import messages as m
from parking.entrypoints.auth import car_park_caller
from parking.entrypoints.followups import HoldFollowUps
from parking.service_layer import entries, quotes, settlements
from parking.service_layer.config_cache import ConfigCache
from parking.service_layer.ports import PointsPort


class CarParkServicer(parking_service_pb2_grpc.CarParkServiceServicer):
    def __init__(self, pool: asyncpg.Pool, config: ConfigCache, points: PointsPort | None) -> None:
        self._pool = pool
        self._config = config
        self._points = points
        self._followups = HoldFollowUps(pool, points)

    async def RecordEntry(
        self, request: api.RecordEntryRequest, context: Any
    ) -> api.RecordEntryResponse:
        car_park_caller(request.mall_id, request.car_park_id)
        m.required(entry_ref=request.entry_ref)
        plate, color = m.plate(request.plate_number, request.plate_color, color_required=False)
        entry = entries.Entry(
            mall_id=request.mall_id,
            car_park_id=request.car_park_id,
            plate_number=plate,
            color=color,
            entered_at=m.when(request.entered_at),
            entry_ref=request.entry_ref,
            gate_id=request.gate_id,
        )
        async with self._pool.acquire() as conn:
            entered = await entries.record_entry(conn, entry)
        if entered.abandoned_session_id:  # release what was held for the missed exit
            self._after(request.mall_id, entered.abandoned_session_id)
        return api.RecordEntryResponse(
            session=m.session_message(entered.session), duplicate=entered.duplicate
        )

    async def QuoteExit(self, request: api.QuoteExitRequest, context: Any) -> api.QuoteExitResponse:
        car_park_caller(request.mall_id, request.car_park_id)
        plate, color = m.plate(request.plate_number, request.plate_color, color_required=False)
        query = quotes.ExitQuery(
            mall_id=request.mall_id,
            car_park_id=request.car_park_id,
            plate_number=plate,
            color=color,
            exit_at=m.when(request.exit_at),
            gate_id=request.gate_id,
        )
        quoted, release = await quotes.quote_exit(self._pool, self._config, self._points, query)
        if release:
            self._after(request.mall_id, quoted.session.session_id)
        return api.QuoteExitResponse(
            session=m.session_message(quoted.session),
            quote=m.quote_message(quoted.quote),
            gate_may_open=quoted.gate_may_open,
            prepaid=quoted.session.prepaid,
        )

    async def SettleExit(
        self, request: api.SettleExitRequest, context: Any
    ) -> api.SettleExitResponse:
        car_park_caller(request.mall_id, request.car_park_id)
        m.required(session_id=request.session_id, quote_id=request.quote_id)
        settlement = settlements.Settlement(
            mall_id=request.mall_id,
            car_park_id=request.car_park_id,
            session_id=request.session_id,
            quote_id=request.quote_id,
            paid_fen=max(0, request.paid_fen),
            method=m.method(request.payment_method),
            exited_at=m.when(request.exited_at),
            gate_id=request.gate_id,
        )
        async with self._pool.acquire() as conn:
            session, holds = await settlements.settle_exit(conn, settlement)
        if holds:
            self._after(request.mall_id, session.session_id)
        return api.SettleExitResponse(session=m.session_message(session), gate_may_open=True)

    def _after(self, mall_id: str, session_id: str) -> None:
        self._followups.after(mall_id, session_id)
