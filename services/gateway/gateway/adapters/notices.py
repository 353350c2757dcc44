"""The member's notices pushed live besides points: a tier change's benefits (权益变更提醒),
a shopping guide chosen, their car entering or leaving a car park, and their coupons issued,
used, taken back or about to expire (the reminder WeChat's card package gives). Each decodes to
(mall_id, member_id, event) for that member's streams only; a visitor's car (no member) is
nobody's notice."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from google.protobuf import timestamp_pb2
from mall.coupons.v1 import events_pb2 as coupons_events
from mall.member.v1 import events_pb2 as member_events
from mall.parking.v1 import events_pb2 as parking_events

BENEFITS_CHANGED = "member.benefits.changed"
GUIDE_BOUND = "member.guide.bound"
PARKING_STARTED = "parking.session.started"
PARKING_SETTLED = "parking.session.settled"
IDENTITY_MERGED = "member.identity.merged"
COUPON_CLAIMED = "coupons.coupon.claimed"
COUPON_EXPIRING = "coupons.coupon.expiring"
COUPON_REDEEMED = "coupons.coupon.redeemed"
COUPON_REVOKED = "coupons.coupon.revoked"
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


def _claimed(data: bytes) -> Decoded:
    e = coupons_events.CouponClaimed.FromString(data)
    return (
        e.mall_id,
        e.member_id,
        {
            "type": "coupon.issued",
            "coupon_id": e.coupon_id,
            "stock_id": e.stock_id,
            "tenant_id": e.tenant_id,
            # set when a payment issued it (支付后有礼): the receipt it belongs to
            "transaction_id": e.transaction_id or None,
            "valid_until": _iso(e.valid_until) if e.HasField("valid_until") else None,
        },
    )


def _expiring(data: bytes) -> Decoded:
    e = coupons_events.CouponExpiring.FromString(data)
    return (
        e.mall_id,
        e.member_id,
        {
            "type": "coupon.expiring",
            "coupon_id": e.coupon_id,
            "stock_id": e.stock_id,
            "expires_at": _iso(e.expires_at),
        },
    )


def _redeemed(data: bytes) -> Decoded:
    e = coupons_events.CouponRedeemed.FromString(data)
    return (
        e.mall_id,
        e.member_id,
        {
            "type": "coupon.redeemed",
            "coupon_id": e.coupon_id,
            "store_id": e.store_id,
            "discount_fen": e.discount_fen,
        },
    )


def _revoked(data: bytes) -> Decoded:
    e = coupons_events.CouponRevoked.FromString(data)
    return (
        e.mall_id,
        e.member_id,
        {"type": "coupon.revoked", "coupon_id": e.coupon_id, "refund_id": e.refund_id or None},
    )


_DECODERS = {
    BENEFITS_CHANGED: _benefits,
    GUIDE_BOUND: _guide,
    PARKING_STARTED: _started,
    PARKING_SETTLED: _settled,
    COUPON_CLAIMED: _claimed,
    COUPON_EXPIRING: _expiring,
    COUPON_REDEEMED: _redeemed,
    COUPON_REVOKED: _revoked,
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
