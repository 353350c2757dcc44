"""Event handlers: what parking learns from member (tiers, spend, the directory)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from eventbus.consumer import Delivery
from kit.db import Connection
from kit.proto import to_datetime
from mall.coupons.v1 import coupons_pb2
from mall.coupons.v1 import events_pb2 as coupon_events
from mall.member.v1 import events_pb2 as member_events

from parking.adapters import coupons, directory, members, merges

log = structlog.get_logger(__name__)

PAYMENT_ATTRIBUTED = "member.payment.attributed"
REFUND_ATTRIBUTED = "member.refund.attributed"
TIER_CHANGED = "member.tier.changed"
DIRECTORY_CHANGED = "member.directory.>"
IDENTITY_MERGED = "member.identity.merged"
COUPON_CLAIMED = "coupons.coupon.claimed"
COUPON_REVOKED = "coupons.coupon.revoked"


async def on_payment_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """A payment raises the member's spend (same-day benefit) and tells their tier."""
    payments = []
    tiers = []
    for d in deliveries:
        msg = d.decode(member_events.PaymentAttributed)
        paid_at = (
            to_datetime(msg.paid_at) if msg.HasField("paid_at") else to_datetime(msg.occurred_at)
        )
        payments.append((msg.mall_id, msg.transaction_id, msg.member_id, msg.amount_fen, paid_at))
        if msg.tier_code:
            tiers.append((msg.mall_id, msg.member_id, msg.tier_code, to_datetime(msg.occurred_at)))
    await members.add_payments(conn, payments)
    await members.set_tiers(conn, tiers)


async def on_refund_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """A refund lowers the spend of the payment it refers to (even if that comes later)."""
    refunds = []
    for d in deliveries:
        msg = d.decode(member_events.RefundAttributed)
        refunds.append(
            (msg.mall_id, msg.refund_id, msg.transaction_id, msg.member_id, msg.refund_amount_fen)
        )
    await members.add_refunds(conn, refunds)


async def on_tier_changed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    changes = []
    for d in deliveries:
        msg = d.decode(member_events.TierChanged)
        changes.append((msg.mall_id, msg.member_id, msg.tier_code, to_datetime(msg.occurred_at)))
    await members.set_tiers(conn, changes)


async def on_directory_changed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """Keep the malls (time zone, WeChat ids) and car parks (names) the relay's WeChat calls
    and the quotes use. Credentials come through the DIRECTORY bucket (kit.directory)."""
    for d in deliveries:
        kind = d.subject.rsplit(".", 1)[-1]
        if kind == "mall_upserted":
            mall = d.decode(member_events.MallUpserted).mall
            await directory.upsert_mall(
                conn, mall.mall_id, mall.time_zone, mall.appid, mall.brand_id, mall.mchid
            )
        elif kind == "car_park_upserted":
            park = d.decode(member_events.CarParkUpserted).car_park
            await directory.upsert_car_park(conn, park.mall_id, park.car_park_id, park.name)


async def on_coupon_claimed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """Parking-hour coupons a member now holds (other coupon types are not parking's)."""
    claimed = []
    for d in deliveries:
        msg = d.decode(coupon_events.CouponClaimed)
        if msg.coupon_type != coupons_pb2.COUPON_TYPE_PARKING or msg.parking_minutes <= 0:
            continue
        claimed.append(
            (
                msg.mall_id,
                msg.coupon_id,
                msg.member_id,
                msg.parking_minutes,
                to_datetime(msg.valid_from) if msg.HasField("valid_from") else None,
                to_datetime(msg.valid_until) if msg.HasField("valid_until") else None,
            )
        )
    await coupons.add(conn, claimed)


async def on_coupon_revoked(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """A revoked coupon (its payment refunded) no longer gives free parking."""
    revoked = []
    for d in deliveries:
        msg = d.decode(coupon_events.CouponRevoked)
        revoked.append((msg.mall_id, msg.coupon_id, msg.member_id))
    await coupons.revoke(conn, revoked)


async def on_identity_merged(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """Two members were one person: the absorbed one's plates and benefit facts move."""
    for d in deliveries:
        msg = d.decode(member_events.IdentityMerged)
        if msg.merged_member_id and msg.survivor_member_id:
            moved = await merges.move_member(
                conn, msg.mall_id, msg.merged_member_id, msg.survivor_member_id
            )
            log.info("member_merged", mall_id=msg.mall_id, plates_moved=moved)
