"""The live notices besides points (``gateway.adapters.notices`` through ``adapters.live``):
each event decodes to its member's notice, a visitor's car to nobody's, and every one of them
also invalidates that member's cached card."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from gateway.adapters.live import FEED_SUBJECTS, decode, member_of
from gateway.adapters.notices import merge_of
from gateway.domain.shoppers import Session
from gateway.service_layer.merges import MergedMembers
from kit.proto import timestamp
from mall.coupons.v1 import events_pb2 as coupons_events
from mall.member.v1 import events_pb2 as member_events
from mall.member.v1 import member_pb2
from mall.parking.v1 import events_pb2 as parking_events


def _ids() -> tuple[str, str]:
    return f"mall-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())


def test_a_benefit_change_is_its_members_notice_with_what_was_gained_and_lost() -> None:
    mall_id, member_id = _ids()
    event = member_events.BenefitsChanged(
        mall_id=mall_id,
        member_id=member_id,
        previous_tier=member_pb2.Tier(tier_code="silver"),
        tier=member_pb2.Tier(tier_code="gold", name="金卡会员"),
        changes=[
            member_events.ChangedBenefit(
                change=member_events.BENEFIT_CHANGE_GAINED,
                benefit=member_pb2.TierBenefit(
                    benefit_code="parking_free_3h", title="免费停车3小时"
                ),
            ),
            member_events.ChangedBenefit(
                change=member_events.BENEFIT_CHANGE_LOST,
                benefit=member_pb2.TierBenefit(benefit_code="tea", title="茶饮"),
            ),
        ],
    ).SerializeToString()

    decoded = decode("member.benefits.changed", event)

    assert decoded is not None
    assert decoded[:2] == (mall_id, member_id)
    notice = decoded[2]
    assert (notice["type"], notice["tier_code"], notice["previous_tier_code"]) == (
        "benefits.changed",
        "gold",
        "silver",
    )
    assert [(c["change"], c["benefit_code"]) for c in notice["changes"]] == [
        ("gained", "parking_free_3h"),
        ("lost", "tea"),
    ]
    assert member_of("member.benefits.changed", event) == (mall_id, member_id)
    assert "member.benefits.changed" in FEED_SUBJECTS


def test_a_guide_bound_and_a_car_settled_are_their_members_notices() -> None:
    mall_id, member_id = _ids()
    bound = member_events.GuideBound(
        mall_id=mall_id, member_id=member_id, guide_id="g-ann", tenant_id="t", store_id="s"
    ).SerializeToString()
    settled = parking_events.SessionSettled(
        mall_id=mall_id,
        member_id=member_id,
        session_id="s-1",
        car_park_id="p1",
        plate_number="粤B12345",
        exited_at=timestamp(datetime(2026, 11, 26, 8, 0, tzinfo=UTC)),
        gross_fee_fen=1500,
        discount_fen=1000,
        paid_fen=500,
    ).SerializeToString()

    guide = decode("member.guide.bound", bound)
    parked = decode("parking.session.settled", settled)

    assert guide is not None
    assert guide[2] == {
        "type": "guide.bound",
        "guide_id": "g-ann",
        "tenant_id": "t",
        "store_id": "s",
        "previous_guide_id": None,
    }
    assert parked is not None
    assert parked[:2] == (mall_id, member_id)
    assert (parked[2]["type"], parked[2]["paid_fen"], parked[2]["exited_at"]) == (
        "parking.settled",
        500,
        "2026-11-26T08:00:00Z",
    )
    assert member_of("member.guide.bound", bound) == (mall_id, member_id)


def test_a_visitors_car_is_nobodys_notice() -> None:
    mall_id, _ = _ids()
    started = parking_events.SessionStarted(
        mall_id=mall_id, session_id="s-2", car_park_id="p1", plate_number="粤B54321"
    ).SerializeToString()

    assert decode("parking.session.started", started) is None
    assert member_of("parking.session.started", started) is None


def test_a_merge_makes_the_merged_members_sessions_read_as_the_survivors() -> None:
    mall_id, first = _ids()
    second, third, bystander = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    event = member_events.IdentityMerged(
        mall_id=mall_id, merged_member_id=first, survivor_member_id=second
    ).SerializeToString()
    merges = MergedMembers(limit=2)

    merge = merge_of("member.identity.merged", event)
    assert merge == (mall_id, first, second)
    merges.record(*merge)
    merges.record(mall_id, second, third)  # the survivor merged again later

    assert merges.resolve(Session(mall_id, "o-1", first)).member_id == third
    assert merges.resolve(Session(mall_id, "o-2", bystander)).member_id == bystander
    assert merges.resolve(Session(mall_id, "o-3", None)).member_id is None
    assert merges.survivor("another-mall", first) == first
    merges.record(mall_id, bystander, third)  # over the limit: the oldest merge is forgotten
    assert merges.survivor(mall_id, first) == first
    assert "member.identity.merged" in FEED_SUBJECTS


def test_coupon_events_are_their_members_notices_and_change_their_card() -> None:
    mall_id, member_id = _ids()
    expires = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
    events = {
        "coupons.coupon.claimed": coupons_events.CouponClaimed(
            mall_id=mall_id, member_id=member_id, coupon_id="c1", stock_id="s1",
            transaction_id="4200001", valid_until=timestamp(expires),
        ),
        "coupons.coupon.expiring": coupons_events.CouponExpiring(
            mall_id=mall_id, member_id=member_id, coupon_id="c1", stock_id="s1",
            expires_at=timestamp(expires),
        ),
        "coupons.coupon.redeemed": coupons_events.CouponRedeemed(
            mall_id=mall_id, member_id=member_id, coupon_id="c1", store_id="st", discount_fen=500
        ),
        "coupons.coupon.revoked": coupons_events.CouponRevoked(
            mall_id=mall_id, member_id=member_id, coupon_id="c1", refund_id="r1"
        ),
    }  # fmt: skip

    notices = {}
    for subject, event in events.items():
        decoded = decode(subject, event.SerializeToString())
        assert decoded is not None
        assert decoded[:2] == (mall_id, member_id)
        notices[subject] = decoded[2]

    assert notices["coupons.coupon.claimed"]["type"] == "coupon.issued"
    assert notices["coupons.coupon.claimed"]["transaction_id"] == "4200001"
    assert notices["coupons.coupon.claimed"]["valid_until"] == "2026-12-01T16:00:00Z"
    assert notices["coupons.coupon.expiring"]["expires_at"] == "2026-12-01T16:00:00Z"
    assert notices["coupons.coupon.redeemed"]["discount_fen"] == 500
    assert notices["coupons.coupon.revoked"]["refund_id"] == "r1"
    expired = coupons_events.CouponExpired(mall_id=mall_id, member_id=member_id, coupon_id="c1")
    assert decode("coupons.coupon.expired", expired.SerializeToString()) is None  # no push
    assert member_of("coupons.coupon.expired", expired.SerializeToString()) == (mall_id, member_id)
