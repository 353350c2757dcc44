"""The gate controller: entry, exit quote, settlement, as a car-park system calls them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mall.parking.v1 import parking_pb2 as pb
from mall.parking.v1 import parking_service_pb2 as api
from mall.parking.v1 import parking_service_pb2_grpc as stubs

CREDENTIAL_HEADER = "x-mall-credential"


def _ts(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


@dataclass(frozen=True)
class Left:
    """How a vehicle left: what the quote said and how the gate settled it."""

    session_id: str
    gross_fee_fen: int
    discount_fen: int
    paid_fen: int
    method: str
    entry_missing: bool
    benefits: list[str] = field(default_factory=list)


class Gate:
    """One car park's gates, speaking CarParkService with the car park's credential."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        mall_id: str,
        car_park_id: str,
        credential: str,
        timeout_s: float = 5.0,
    ) -> None:
        self._stub = stubs.CarParkServiceStub(channel)
        self.mall_id = mall_id
        self.car_park_id = car_park_id
        self._metadata = ((CREDENTIAL_HEADER, credential),)
        self._timeout_s = timeout_s

    async def enter(
        self, plate: str, color: str, at: datetime, *, entry_ref: str | None = None
    ) -> api.RecordEntryResponse:
        return await self._stub.RecordEntry(
            api.RecordEntryRequest(
                mall_id=self.mall_id,
                car_park_id=self.car_park_id,
                plate_number=plate,
                plate_color=pb.PlateColor.Value(f"PLATE_COLOR_{color}"),
                entered_at=_ts(at),
                entry_ref=entry_ref or uuid.uuid4().hex,
                gate_id="in-1",
            ),
            metadata=self._metadata,
            timeout=self._timeout_s,
        )

    async def quote(self, plate: str, at: datetime) -> api.QuoteExitResponse:
        return await self._stub.QuoteExit(
            api.QuoteExitRequest(
                mall_id=self.mall_id,
                car_park_id=self.car_park_id,
                plate_number=plate,
                exit_at=_ts(at),
                gate_id="out-1",
            ),
            metadata=self._metadata,
            timeout=self._timeout_s,
        )

    async def settle(
        self, reply: api.QuoteExitResponse, method: str, paid_fen: int
    ) -> api.SettleExitResponse:
        return await self._stub.SettleExit(
            api.SettleExitRequest(
                mall_id=self.mall_id,
                car_park_id=self.car_park_id,
                session_id=reply.session.session_id,
                quote_id=reply.quote.quote_id,
                paid_fen=paid_fen,
                exited_at=reply.quote.quoted_at,
                payment_method=pb.PaymentMethod.Value(f"PAYMENT_METHOD_{method}"),
                gate_id="out-1",
            ),
            metadata=self._metadata,
            timeout=self._timeout_s,
        )

    async def leave(self, plate: str, at: datetime) -> Left:
        """Quote, take payment the way the quote allows, settle: what a real exit lane does."""
        reply = await self.quote(plate, at)
        q = reply.quote
        uses_points = any(b.kind == pb.BENEFIT_KIND_POINTS for b in q.benefits)
        if q.payable_fen == 0:
            method, paid = ("POINTS" if uses_points else "BENEFITS_ONLY"), 0
        elif reply.session.pay_score:
            method, paid = "PAY_SCORE", 0
        else:
            method, paid = "PAID_AT_EXIT", q.payable_fen
        settled = await self.settle(reply, method, paid)
        return Left(
            session_id=settled.session.session_id,
            gross_fee_fen=q.gross_fee_fen,
            discount_fen=q.discount_fen,
            paid_fen=paid,
            method=method,
            entry_missing=reply.session.entry_missing,
            benefits=[b.description for b in q.benefits],
        )
