"""Client of parking's ParkingService for the signed-in shopper: plates, the stay in progress,
today's benefits, the card's parking section, one payment's parking benefit, and settling the
stay before leaving, as plain data for the views.

Settling before leaving (QuoteMemberExit / SettleMemberExit) covers benefits and points only:
a quote with money left to pay is refused (``payment_required``); money is paid at the exit
machine or by WeChat Pay's pay-score. After settling, the exit gate opens without payment until
``leave_by``; later, the time after it is charged at the gate.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import timestamp_pb2
from kit.errors import NotFound, Unavailable
from mall.parking.v1 import parking_pb2, parking_service_pb2, parking_service_pb2_grpc

from gateway.adapters.services import _reraise

MALL_ZONE = ZoneInfo("Asia/Shanghai")
COLORS = {
    v: k.removeprefix("PLATE_COLOR_").lower()
    for k, v in parking_pb2.PlateColor.items()
    if v != parking_pb2.PLATE_COLOR_UNSPECIFIED
}
COLOR_VALUES = {name: value for value, name in COLORS.items()}
_BENEFITS = {v: k.removeprefix("BENEFIT_KIND_").lower() for k, v in parking_pb2.BenefitKind.items()}

if TYPE_CHECKING:
    Stub = parking_service_pb2_grpc.ParkingServiceAsyncStub


def _iso(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def end_of_mall_day(now: datetime) -> str:
    """The end of the mall's business day ``now`` falls in (Asia/Shanghai), in UTC."""
    local = now.astimezone(MALL_ZONE)
    midnight = datetime(local.year, local.month, local.day, tzinfo=MALL_ZONE) + timedelta(days=1)
    return midnight.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _connected(stub: Stub | None) -> Stub:
    if stub is None:
        raise Unavailable("upstream_unavailable", "parking is not connected to this gateway")
    return stub


def plate(p: parking_pb2.Plate) -> dict[str, Any]:
    return {
        "plate_number": p.plate_number,
        "plate_color": COLORS.get(p.plate_color, "unknown"),
        "pay_with_points": p.pay_with_points,
        "bound_at": _iso(p.bound_at),
    }


def benefit(b: parking_pb2.AppliedBenefit) -> dict[str, Any]:
    return {
        "kind": _BENEFITS.get(b.kind, "unspecified"),
        "description": b.description,
        "free_minutes": b.free_minutes,
        "discount_fen": b.discount_fen,
        "points": b.points,
    }


async def list_plates(
    stub: Stub | None, mall_id: str, member_id: str, timeout_s: float
) -> list[dict[str, Any]]:
    request = parking_service_pb2.ListPlatesRequest(mall_id=mall_id, member_id=member_id)
    try:
        reply = await _connected(stub).ListPlates(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _reraise(exc) from None
    return [plate(p) for p in reply.plates]


async def bind_plate(
    stub: Stub | None,
    mall_id: str,
    member_id: str,
    *,
    plate_number: str,
    plate_color: str,
    pay_with_points: bool,
    timeout_s: float,
) -> dict[str, Any]:
    request = parking_service_pb2.BindPlateRequest(
        mall_id=mall_id,
        member_id=member_id,
        plate_number=plate_number,
        plate_color=COLOR_VALUES[plate_color],
        pay_with_points=pay_with_points,
    )
    try:
        reply = await _connected(stub).BindPlate(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _reraise(exc) from None
    return plate(reply.plate)


async def unbind_plate(
    stub: Stub | None, mall_id: str, member_id: str, plate_number: str, timeout_s: float
) -> None:
    """Unbind one of the member's own plates; ``plate_not_bound`` (404) when it is not one of
    them (another member's plate looks exactly like one nobody bound)."""
    mine = {p["plate_number"] for p in await list_plates(stub, mall_id, member_id, timeout_s)}
    if plate_number not in mine:
        raise NotFound("plate_not_bound", "that plate is not bound to this member")
    request = parking_service_pb2.UnbindPlateRequest(
        mall_id=mall_id, member_id=member_id, plate_number=plate_number
    )
    try:
        await _connected(stub).UnbindPlate(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _reraise(exc) from None


async def current_stay(
    stub: Stub | None, mall_id: str, member_id: str, timeout_s: float
) -> dict[str, Any]:
    """The member's vehicle in a car park now, with the fee so far and the benefits applied
    to it live; ``{"parked": false, ...nulls}`` when none of their vehicles is inside."""
    request = parking_service_pb2.GetSessionForMemberRequest(mall_id=mall_id, member_id=member_id)
    try:
        reply = await _connected(stub).GetSessionForMember(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _reraise(exc) from None
    if not reply.HasField("session"):
        return {
            "parked": False,
            "session_id": None,
            "car_park_id": None,
            "plate_number": None,
            "entered_at": None,
            "parked_minutes": None,
            "fee_so_far_fen": None,
            "discount_fen": None,
            "payable_fen": None,
            "benefits": [],
            "leave_by": None,
        }
    s, q = reply.session, reply.preview
    return {
        "parked": True,
        "session_id": s.session_id,
        "car_park_id": s.car_park_id,
        "plate_number": s.plate_number,
        "entered_at": _iso(s.entered_at),
        "parked_minutes": q.parked_minutes,
        "fee_so_far_fen": q.gross_fee_fen,
        "discount_fen": q.discount_fen,
        "payable_fen": q.payable_fen,
        "benefits": [benefit(b) for b in q.benefits],
        "leave_by": _iso(s.leave_by) if s.HasField("leave_by") else None,
    }


async def member_benefits(
    stub: Stub | None, mall_id: str, member_id: str, timeout_s: float
) -> parking_service_pb2.GetMemberBenefitsResponse:
    request = parking_service_pb2.GetMemberBenefitsRequest(mall_id=mall_id, member_id=member_id)
    try:
        reply: parking_service_pb2.GetMemberBenefitsResponse = await _connected(
            stub
        ).GetMemberBenefits(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _reraise(exc) from None
    return reply


async def card_parking(
    stub: Stub | None, mall_id: str, member_id: str, deadline_s: float
) -> dict[str, Any]:
    """The card's parking section: the free time the stay in progress gets today (tier, the
    day's spend, coupons) or, with no car inside, what a stay today would get; and until when
    (the end of the mall's day). Both are asked at once: the card waits for the slower."""
    stay, today = await asyncio.gather(
        current_stay(stub, mall_id, member_id, deadline_s),
        member_benefits(stub, mall_id, member_id, deadline_s),
    )
    if stay["parked"]:
        free = sum(b["free_minutes"] for b in stay["benefits"])
    else:
        free = today.free_minutes_today
    return {
        "parked": stay["parked"],
        "car_park_id": stay["car_park_id"],
        "entered_at": stay["entered_at"],
        "free_minutes_today": free,
        "payable_fen": stay["payable_fen"],
        "valid_until": _iso(today.valid_until)
        if today.HasField("valid_until")
        else end_of_mall_day(datetime.now(UTC)),
    }


async def payment_benefit(
    stub: Stub | None, mall_id: str, member_id: str, transaction_id: str, timeout_s: float
) -> dict[str, Any] | None:
    """The free parking minutes one payment added to its day (net of its refunds); None when
    parking does not know the payment (yet), is not connected or did not answer."""
    if stub is None:
        return None
    request = parking_service_pb2.GetPaymentBenefitRequest(
        mall_id=mall_id, member_id=member_id, transaction_id=transaction_id
    )
    try:
        reply = await stub.GetPaymentBenefit(request, timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return None
    return {
        "free_minutes": reply.free_minutes,
        "business_day": reply.business_day,
        "spend_before_fen": reply.spend_before_fen,
        "spend_after_fen": reply.spend_after_fen,
    }


def _quote(s: parking_pb2.ParkingSession, q: parking_pb2.ExitQuote) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "car_park_id": s.car_park_id,
        "plate_number": s.plate_number,
        "entered_at": _iso(s.entered_at),
        "quote_id": q.quote_id,
        "parked_minutes": q.parked_minutes,
        "fee_fen": q.gross_fee_fen,
        "discount_fen": q.discount_fen,
        "payable_fen": q.payable_fen,
        "points": sum(b.points for b in q.benefits),
        "benefits": [benefit(b) for b in q.benefits],
        "valid_until": _iso(q.valid_until),
    }


async def quote_before_leaving(
    stub: Stub | None,
    mall_id: str,
    member_id: str,
    *,
    use_points: bool,
    request_id: str,
    timeout_s: float,
) -> dict[str, Any]:
    """The gate's quote for leaving now, points held for it when ``use_points``."""
    request = parking_service_pb2.QuoteMemberExitRequest(
        mall_id=mall_id, member_id=member_id, use_points=use_points, request_id=request_id
    )
    try:
        reply = await _connected(stub).QuoteMemberExit(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _reraise(exc) from None
    return _quote(reply.session, reply.quote)


async def settle_before_leaving(
    stub: Stub | None,
    mall_id: str,
    member_id: str,
    *,
    session_id: str,
    quote_id: str,
    request_id: str,
    timeout_s: float,
) -> dict[str, Any]:
    """Settle the member's stay on their quote; the exit gate then opens until leave_by."""
    request = parking_service_pb2.SettleMemberExitRequest(
        mall_id=mall_id,
        member_id=member_id,
        session_id=session_id,
        quote_id=quote_id,
        request_id=request_id,
    )
    try:
        reply = await _connected(stub).SettleMemberExit(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _reraise(exc) from None
    return {
        **_quote(reply.session, reply.quote),
        "settled_at": _iso(reply.session.prepaid_at),
        "leave_by": _iso(reply.leave_by),
    }


class ParkingSection:
    """The member card's parking section (``fetch`` is its ``SectionSource``)."""

    def __init__(self, stub: Stub | None) -> None:
        self._stub = stub

    async def fetch(self, mall_id: str, member_id: str, deadline_s: float) -> dict[str, Any]:
        return await card_parking(self._stub, mall_id, member_id, deadline_s)
