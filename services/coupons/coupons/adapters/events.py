"""Translate coupons outcomes into contract events for the outbox, and the enum mappings the
gRPC edge shares."""

from __future__ import annotations

from eventbus.outbox import OutgoingEvent, event
from kit.proto import timestamp
from mall.coupons.v1 import coupons_pb2, events_pb2

from coupons.domain.claims import Channel
from coupons.domain.coupons import Coupon
from coupons.domain.stocks import Kind, Stock

KINDS: dict[Kind, coupons_pb2.CouponType.ValueType] = {
    Kind.FIXED_AMOUNT: coupons_pb2.COUPON_TYPE_FIXED_AMOUNT,
    Kind.PERCENT_OFF: coupons_pb2.COUPON_TYPE_PERCENT_OFF,
    Kind.EXCHANGE: coupons_pb2.COUPON_TYPE_EXCHANGE,
    Kind.PARKING: coupons_pb2.COUPON_TYPE_PARKING,
}
CHANNELS: dict[Channel, coupons_pb2.ClaimChannel.ValueType] = {
    Channel.MINI_PROGRAM: coupons_pb2.CLAIM_CHANNEL_MINI_PROGRAM,
    Channel.POST_PAYMENT: coupons_pb2.CLAIM_CHANNEL_POST_PAYMENT,
    Channel.POINTS: coupons_pb2.CLAIM_CHANNEL_POINTS,
    Channel.OPS: coupons_pb2.CLAIM_CHANNEL_OPS,
    Channel.PACKAGE_CARD: coupons_pb2.CLAIM_CHANNEL_PACKAGE_CARD,
    Channel.GUIDE: coupons_pb2.CLAIM_CHANNEL_GUIDE,
}

COUPON_CLAIMED = "coupons.coupon.claimed"
COUPON_REDEEMED = "coupons.coupon.redeemed"
COUPON_REVOKED = "coupons.coupon.revoked"
COUPON_RETURNED = "coupons.coupon.returned"
STOCK_EXHAUSTED = "coupons.stock.exhausted"


def coupon_claimed(c: Coupon, headers: dict[str, str], points_hold_id: str = "") -> OutgoingEvent:
    t = c.terms
    msg = events_pb2.CouponClaimed(
        occurred_at=timestamp(c.claimed_at),
        coupon_id=c.coupon_id,
        stock_id=c.stock_id,
        tenant_id=c.tenant_id,
        member_id=c.member_id,
        channel=CHANNELS[Channel(c.channel)],
        transaction_id=c.transaction_id,
        redemption_id=points_hold_id,
        valid_until=timestamp(c.valid_until),
        coupon_type=KINDS[t.kind],
        parking_minutes=t.parking_minutes,
        valid_from=timestamp(c.valid_from),
        guide_id=c.guide_id,
        discount_fen=t.discount_fen if t.kind is Kind.FIXED_AMOUNT else 0,
    )
    return event(COUPON_CLAIMED, msg, mall_id=c.mall_id, headers=headers)


def stock_exhausted(stock: Stock, headers: dict[str, str]) -> OutgoingEvent:
    msg = events_pb2.StockExhausted(
        stock_id=stock.stock_id, tenant_id=stock.tenant_id, max_coupons=stock.issuable
    )
    return event(
        STOCK_EXHAUSTED,
        msg,
        mall_id=stock.mall_id,
        event_id=f"stock-exhausted:{stock.mall_id}:{stock.stock_id}",
        headers=headers,
    )


def coupon_redeemed(
    c: Coupon,
    *,
    store_id: str,
    use_request_id: str,
    order_amount_fen: int,
    discount_fen: int,
    headers: dict[str, str],
) -> OutgoingEvent:
    msg = events_pb2.CouponRedeemed(
        coupon_id=c.coupon_id,
        stock_id=c.stock_id,
        tenant_id=c.tenant_id,
        store_id=store_id,
        member_id=c.member_id,
        use_request_id=use_request_id,
        order_amount_fen=order_amount_fen,
        discount_fen=discount_fen,
    )
    return event(COUPON_REDEEMED, msg, mall_id=c.mall_id, headers=headers)


def coupon_revoked(
    mall_id: str,
    coupon_id: str,
    stock_id: str,
    member_id: str,
    *,
    refund_id: str,
    transaction_id: str,
    headers: dict[str, str],
) -> OutgoingEvent:
    msg = events_pb2.CouponRevoked(
        coupon_id=coupon_id,
        stock_id=stock_id,
        member_id=member_id,
        refund_id=refund_id,
        transaction_id=transaction_id,
    )
    return event(COUPON_REVOKED, msg, mall_id=mall_id, headers=headers)


def coupon_returned(
    mall_id: str,
    coupon_id: str,
    stock_id: str,
    member_id: str,
    *,
    refund_id: str,
    transaction_id: str,
    headers: dict[str, str],
) -> OutgoingEvent:
    msg = events_pb2.CouponReturned(
        coupon_id=coupon_id,
        stock_id=stock_id,
        member_id=member_id,
        refund_id=refund_id,
        transaction_id=transaction_id,
    )
    return event(COUPON_RETURNED, msg, mall_id=mall_id, headers=headers)


def parking_coupon_redeemed(
    mall_id: str,
    coupon_id: str,
    stock_id: str,
    tenant_id: str,
    member_id: str,
    *,
    car_park_id: str,
    session_id: str,
    use_request_id: str,
    gross_fee_fen: int,
    discount_fen: int,
    headers: dict[str, str],
) -> OutgoingEvent:
    """A parking-hour coupon used by a settled parking session (no store: the car park)."""
    msg = events_pb2.CouponRedeemed(
        coupon_id=coupon_id,
        stock_id=stock_id,
        tenant_id=tenant_id,
        member_id=member_id,
        use_request_id=use_request_id,
        order_amount_fen=gross_fee_fen,
        discount_fen=discount_fen,
        car_park_id=car_park_id,
        session_id=session_id,
    )
    return event(COUPON_REDEEMED, msg, mall_id=mall_id, headers=headers)
