"""The events parking publishes, built from domain objects (translation only)."""

from __future__ import annotations

from typing import Any

from eventbus.outbox import OutgoingEvent, event
from kit.proto import timestamp
from mall.parking.v1 import events_pb2, parking_pb2

from parking.domain.sessions import PaymentMethod, Session

SESSION_STARTED = "parking.session.started"
SESSION_SETTLED = "parking.session.settled"

COLORS = {
    name.removeprefix("PLATE_COLOR_"): number
    for name, number in parking_pb2.PlateColor.items()
    if number
}
METHODS = {
    PaymentMethod(name.removeprefix("PAYMENT_METHOD_").lower()): number
    for name, number in parking_pb2.PaymentMethod.items()
    if number
}
BENEFIT_KINDS = {
    name.removeprefix("BENEFIT_KIND_").lower(): number
    for name, number in parking_pb2.BenefitKind.items()
    if number
}


def applied_benefit(line: dict[str, Any]) -> parking_pb2.AppliedBenefit:
    return parking_pb2.AppliedBenefit(
        kind=BENEFIT_KINDS.get(line["kind"], 0),  # type: ignore[arg-type]
        description=line["description"],
        free_minutes=line["free_minutes"],
        discount_fen=line["discount_fen"],
        points=line.get("points", 0),
        coupon_id=line.get("coupon_id", ""),
    )


def session_started(session: Session) -> OutgoingEvent:
    msg = events_pb2.SessionStarted(
        session_id=session.session_id,
        car_park_id=session.car_park_id,
        plate_number=session.plate_number,
        plate_color=COLORS.get(session.plate_color, 0),  # type: ignore[arg-type]
        member_id=session.member_id or "",
        entered_at=timestamp(session.entered_at),
    )
    return event(
        SESSION_STARTED, msg, mall_id=session.mall_id, event_id=f"started:{session.session_id}"
    )


def session_settled(session: Session, benefits: list[dict[str, Any]]) -> OutgoingEvent:
    assert session.exited_at is not None
    msg = events_pb2.SessionSettled(
        session_id=session.session_id,
        car_park_id=session.car_park_id,
        plate_number=session.plate_number,
        plate_color=COLORS.get(session.plate_color, 0),  # type: ignore[arg-type]
        member_id=session.member_id or "",
        entered_at=timestamp(session.entered_at),
        exited_at=timestamp(session.exited_at),
        gross_fee_fen=session.gross_fee_fen,
        discount_fen=session.discount_fen,
        paid_fen=session.paid_fen,
        benefits=[applied_benefit(b) for b in benefits],
        payment_method=METHODS.get(session.payment_method, 0)  # type: ignore[arg-type]
        if session.payment_method
        else 0,
        entry_missing=session.entry_missing,
    )
    return event(
        SESSION_SETTLED, msg, mall_id=session.mall_id, event_id=f"settled:{session.session_id}"
    )
