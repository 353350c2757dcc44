"""The member's notices pushed live besides points: a tier change's benefits (权益变更提醒),
a shopping guide chosen, and their car entering or leaving a car park. Each decodes to
(mall_id, member_id, event) for that member's streams only; a visitor's car (no member) is
nobody's notice."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from google.protobuf import timestamp_pb2
from mall.member.v1 import events_pb2 as member_events
from mall.parking.v1 import events_pb2 as parking_events

BENEFITS_CHANGED = "member.benefits.changed"
GUIDE_BOUND = "member.guide.bound"
PARKING_STARTED = "parking.session.started"
PARKING_SETTLED = "parking.session.settled"
IDENTITY_MERGED = "member.identity.merged"
SUBJECTS = (BENEFITS_CHANGED, GUIDE_BOUND, IDENTITY_MERGED)  # parking.session.> already is
_CHANGES = {
    member_events.BENEFIT_CHANGE_GAINED: "gained",
    member_events.BENEFIT_CHANGE_LOST: "lost",
    member_events.BENEFIT_CHANGE_CHANGED: "changed",
}

Decoded = tuple[str, str, dict[str, Any]]


def _iso(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _benefits(data: bytes) -> Decoded:
    e = member_events.BenefitsChanged.FromString(data)
    return (
        e.mall_id,
        e.member_id,
        {
            "type": "benefits.changed",
            "tier_code": e.tier.tier_code,
            "tier_name": e.tier.name,
            "previous_tier_code": e.previous_tier.tier_code,
            "changes": [
                {
                    "change": _CHANGES.get(c.change, "changed"),
                    "benefit_code": c.benefit.benefit_code,
                    "title": c.benefit.title,
                }
                for c in e.changes
            ],
        },
    )


def _guide(data: bytes) -> Decoded:
    e = member_events.GuideBound.FromString(data)
    return (
        e.mall_id,
        e.member_id,
        {
            "type": "guide.bound",
            "guide_id": e.guide_id,
            "tenant_id": e.tenant_id,
            "store_id": e.store_id,
            "previous_guide_id": e.previous_guide_id or None,
        },
    )


def _started(data: bytes) -> Decoded:
    e = parking_events.SessionStarted.FromString(data)
    return (
        e.mall_id,
        e.member_id,
        {
            "type": "parking.started",
            "session_id": e.session_id,
            "car_park_id": e.car_park_id,
            "plate_number": e.plate_number,
            "entered_at": _iso(e.entered_at),
        },
    )


def _settled(data: bytes) -> Decoded:
    e = parking_events.SessionSettled.FromString(data)
    return (
        e.mall_id,
        e.member_id,
        {
            "type": "parking.settled",
            "session_id": e.session_id,
            "car_park_id": e.car_park_id,
            "plate_number": e.plate_number,
            "exited_at": _iso(e.exited_at),
            "gross_fee_fen": e.gross_fee_fen,
            "discount_fen": e.discount_fen,
            "paid_fen": e.paid_fen,
        },
    )


_DECODERS = {
    BENEFITS_CHANGED: _benefits,
    GUIDE_BOUND: _guide,
    PARKING_STARTED: _started,
    PARKING_SETTLED: _settled,
}


def decode_notice(subject: str, data: bytes) -> Decoded | None:
    """(mall_id, member_id, event) of a notice for one member; None for other subjects and
    for events about no member (a visitor's car)."""
    decoder = _DECODERS.get(subject)
    if decoder is None:
        return None
    mall_id, member_id, event = decoder(data)
    return (mall_id, member_id, event) if mall_id and member_id else None


def merge_of(subject: str, data: bytes) -> tuple[str, str, str] | None:
    """(mall_id, merged member, survivor) of ``member.identity.merged``; None otherwise."""
    if subject != IDENTITY_MERGED:
        return None
    e = member_events.IdentityMerged.FromString(data)
    if not (e.mall_id and e.merged_member_id and e.survivor_member_id):
        return None
    return e.mall_id, e.merged_member_id, e.survivor_member_id
