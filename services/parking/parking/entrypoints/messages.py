"""Translation between domain objects / rows and the parking contract messages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from kit.errors import InvalidInput
from kit.proto import timestamp, to_datetime
from mall.parking.v1 import parking_pb2

from parking.adapters.events import COLORS, METHODS, applied_benefit
from parking.adapters.plates import PlateRow
from parking.adapters.quotes import QuoteRow
from parking.domain.plates import Color, validate_plate
from parking.domain.sessions import PaymentMethod, Session, Status

_STATUSES = {
    Status.OPEN: parking_pb2.SESSION_STATUS_OPEN,
    Status.SETTLED: parking_pb2.SESSION_STATUS_SETTLED,
    Status.ABANDONED: parking_pb2.SESSION_STATUS_ABANDONED,
}
_METHODS_BY_NUMBER: dict[int, PaymentMethod] = {int(n): method for method, n in METHODS.items()}


def required(**fields: str) -> None:
    for name, value in fields.items():
        if not value:
            raise InvalidInput("missing_field", f"{name} is required")


def member_id(value: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise InvalidInput("invalid_member_id", "member_id must be a UUID") from None
    return value


def color(number: int, *, required_: bool) -> Color | None:
    if number == 0:
        if required_:
            raise InvalidInput("missing_field", "plate_color is required")
        return None
    name = parking_pb2.PlateColor.Name(number).removeprefix("PLATE_COLOR_")  # type: ignore[arg-type]
    return Color(name)


def plate(number: str, color_number: int, *, color_required: bool) -> tuple[str, Color | None]:
    try:
        c = color(color_number, required_=color_required)
    except ValueError:
        raise InvalidInput("invalid_plate_color", "unknown plate_color") from None
    return validate_plate(number, c), c


def method(number: int) -> PaymentMethod:
    found = _METHODS_BY_NUMBER.get(int(number))
    if found is None:
        raise InvalidInput("missing_field", "payment_method is required")
    return found


def when(ts: Timestamp, *, default: datetime | None = None) -> datetime:
    if ts.seconds == 0 and ts.nanos == 0:
        return default or datetime.now(UTC)
    return to_datetime(ts)


def plate_message(row: PlateRow) -> parking_pb2.Plate:
    return parking_pb2.Plate(
        mall_id=row.mall_id,
        member_id=row.member_id,
        plate_number=row.plate_number,
        plate_color=COLORS.get(row.plate_color, 0),  # type: ignore[arg-type]
        bound_at=timestamp(row.bound_at),
        pay_with_points=row.pay_with_points,
        wechat_linked=bool(row.openid),
    )


def session_message(s: Session) -> parking_pb2.ParkingSession:
    msg = parking_pb2.ParkingSession(
        mall_id=s.mall_id,
        session_id=s.session_id,
        car_park_id=s.car_park_id,
        plate_number=s.plate_number,
        plate_color=COLORS.get(s.plate_color, 0),  # type: ignore[arg-type]
        member_id=s.member_id or "",
        status=_STATUSES[s.status],
        entered_at=timestamp(s.entered_at),
        gross_fee_fen=s.gross_fee_fen,
        discount_fen=s.discount_fen,
        paid_fen=s.paid_fen,
        entry_missing=s.entry_missing,
        pay_score=s.pay_score,
    )
    if s.exited_at is not None:
        msg.exited_at.CopyFrom(timestamp(s.exited_at))
    if s.payment_method is not None:
        msg.payment_method = METHODS[s.payment_method]
    if s.prepaid_at is not None and s.prepaid_until is not None:
        msg.prepaid_at.CopyFrom(timestamp(s.prepaid_at))
        msg.leave_by.CopyFrom(timestamp(s.prepaid_until))
    return msg


def quote_message(q: QuoteRow) -> parking_pb2.ExitQuote:
    return parking_pb2.ExitQuote(
        quote_id=q.quote_id,
        session_id=q.session_id,
        parked_minutes=q.parked_minutes,
        gross_fee_fen=q.gross_fee_fen,
        discount_fen=q.discount_fen,
        payable_fen=q.payable_fen,
        benefits=[applied_benefit(b) for b in q.benefits],
        quoted_at=timestamp(q.quoted_at),
        valid_until=timestamp(q.valid_until),
        schedule_version=q.schedule_version,
    )


def benefits_messages(lines: list[dict[str, Any]]) -> list[parking_pb2.AppliedBenefit]:
    return [applied_benefit(b) for b in lines]
