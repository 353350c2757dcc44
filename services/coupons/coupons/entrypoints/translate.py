"""Between contract messages and domain values, both ways (the gRPC edge only)."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from kit.errors import InvalidInput
from kit.proto import timestamp, to_datetime
from mall.coupons.v1 import coupons_pb2, coupons_service_pb2

from coupons.adapters.events import CHANNELS, KINDS
from coupons.adapters.rules import Code
from coupons.domain.claims import Channel, Claim, Outcome
from coupons.domain.coupons import Coupon
from coupons.domain.post_payment import Rule
from coupons.domain.stocks import NewStock, Stock, Terms

_KIND_OF = {number: kind for kind, number in KINDS.items()}
_CHANNEL_OF = {number: channel for channel, number in CHANNELS.items()}
_STATUSES = {
    "available": coupons_pb2.COUPON_STATUS_AVAILABLE,
    "used": coupons_pb2.COUPON_STATUS_USED,
    "expired": coupons_pb2.COUPON_STATUS_EXPIRED,
    "revoked": coupons_pb2.COUPON_STATUS_REVOKED,
}
COUPON_STATUS_NAMES = {number: name for name, number in _STATUSES.items()}
_STOCK_STATUSES = {
    "active": coupons_pb2.STOCK_STATUS_ACTIVE,
    "paused": coupons_pb2.STOCK_STATUS_PAUSED,
    "exhausted": coupons_pb2.STOCK_STATUS_EXHAUSTED,
    "ended": coupons_pb2.STOCK_STATUS_ENDED,
}
STOCK_STATUS_NAMES = {number: name for name, number in _STOCK_STATUSES.items()}
OUTCOMES = {
    Outcome.CLAIMED: coupons_service_pb2.CLAIM_OUTCOME_CLAIMED,
    Outcome.SOLD_OUT: coupons_service_pb2.CLAIM_OUTCOME_SOLD_OUT,
    Outcome.LIMIT_REACHED: coupons_service_pb2.CLAIM_OUTCOME_LIMIT_REACHED,
    Outcome.NOT_CLAIMABLE: coupons_service_pb2.CLAIM_OUTCOME_NOT_CLAIMABLE,
    Outcome.NOT_ELIGIBLE: coupons_service_pb2.CLAIM_OUTCOME_NOT_ELIGIBLE,
    Outcome.NOT_FOUND: coupons_service_pb2.CLAIM_OUTCOME_NOT_FOUND,
    Outcome.INVALID: coupons_service_pb2.CLAIM_OUTCOME_INVALID,
}


def _when(ts: Timestamp, has: bool) -> datetime | None:
    return to_datetime(ts) if has else None


def new_stock(request: coupons_service_pb2.CreateStockRequest) -> NewStock:
    s = request.stock
    kind = _KIND_OF.get(s.coupon_type)
    if kind is None:
        raise InvalidInput("invalid_coupon_type", "coupon_type is required")
    if not s.HasField("claim_starts_at") or not s.HasField("claim_ends_at"):
        raise InvalidInput("invalid_claim_window", "claim_starts_at and claim_ends_at are required")
    return NewStock(
        mall_id=s.mall_id,
        tenant_id=s.tenant_id,
        terms=Terms(
            kind=kind,
            title=s.title,
            description=s.description,
            discount_fen=s.discount_fen,
            threshold_fen=s.threshold_fen,
            percent_off=s.percent_off,
            max_discount_fen=s.max_discount_fen,
            parking_minutes=s.parking_minutes,
            store_ids=tuple(s.store_ids),
            tenant_ids=tuple(s.tenant_ids),
        ),
        max_coupons=s.max_coupons,
        claim_starts_at=to_datetime(s.claim_starts_at),
        claim_ends_at=to_datetime(s.claim_ends_at),
        request_id=request.request_id,
        budget_fen=s.budget_fen,
        max_per_member=s.max_per_member,
        max_per_day=s.max_per_day,
        max_per_member_per_day=s.max_per_member_per_day,
        audience_tiers=tuple(s.audience_tiers),
        audience_tags=tuple(s.audience_tags),
        valid_from=_when(s.valid_from, s.HasField("valid_from")),
        valid_until=_when(s.valid_until, s.HasField("valid_until")),
        valid_days=s.valid_days,
        points_price=s.points_price,
    )


def stock_message(stock: Stock, now: datetime) -> coupons_pb2.Stock:
    t = stock.terms
    message = coupons_pb2.Stock(
        mall_id=stock.mall_id,
        stock_id=stock.stock_id,
        tenant_id=stock.tenant_id,
        title=t.title,
        description=t.description,
        coupon_type=KINDS[t.kind],
        discount_fen=t.discount_fen,
        threshold_fen=t.threshold_fen,
        percent_off=t.percent_off,
        max_discount_fen=t.max_discount_fen,
        parking_minutes=t.parking_minutes,
        max_coupons=stock.max_coupons,
        budget_fen=stock.budget_fen,
        max_per_member=stock.max_per_member,
        max_per_day=stock.max_per_day,
        max_per_member_per_day=stock.max_per_member_per_day,
        store_ids=t.store_ids,
        tenant_ids=t.tenant_ids,
        audience_tiers=stock.audience_tiers,
        audience_tags=stock.audience_tags,
        claim_starts_at=timestamp(stock.claim_starts_at),
        claim_ends_at=timestamp(stock.claim_ends_at),
        valid_days=stock.valid_days,
        points_price=stock.points_price,
        status=_STOCK_STATUSES[stock.status(now)],
        claimed_count=stock.claimed,
    )
    if stock.valid_from is not None:
        message.valid_from.CopyFrom(timestamp(stock.valid_from))
    if stock.valid_until is not None:
        message.valid_until.CopyFrom(timestamp(stock.valid_until))
    if stock.created_at is not None:
        message.created_at.CopyFrom(timestamp(stock.created_at))
    return message


def coupon_message(c: Coupon, now: datetime) -> coupons_pb2.Coupon:
    t = c.terms
    status = "expired" if c.status == "available" and now >= c.valid_until else c.status
    message = coupons_pb2.Coupon(
        mall_id=c.mall_id,
        coupon_id=c.coupon_id,
        stock_id=c.stock_id,
        tenant_id=c.tenant_id,
        member_id=c.member_id,
        status=_STATUSES[status],
        channel=CHANNELS[Channel(c.channel)],
        title=t.title,
        coupon_type=KINDS[t.kind],
        discount_fen=t.discount_fen,
        threshold_fen=t.threshold_fen,
        percent_off=t.percent_off,
        max_discount_fen=t.max_discount_fen,
        parking_minutes=t.parking_minutes,
        claimed_at=timestamp(c.claimed_at),
        valid_from=timestamp(c.valid_from),
        valid_until=timestamp(c.valid_until),
        redeemed_store_id=c.redeemed_store_id,
        redeemed_car_park_id=c.redeemed_car_park_id,
        guide_id=c.guide_id,
        transaction_id=c.transaction_id,
    )
    if c.redeemed_at is not None:
        message.redeemed_at.CopyFrom(timestamp(c.redeemed_at))
    return message


def claim(r: coupons_service_pb2.ClaimCouponRequest) -> Claim:
    channel = _CHANNEL_OF.get(r.channel, Channel.MINI_PROGRAM)
    if channel not in (Channel.MINI_PROGRAM, Channel.POINTS):
        channel = Channel.MINI_PROGRAM  # other channels are the server's own (codes, rules)
    return Claim(
        mall_id=r.mall_id,
        stock_id=r.stock_id,
        member_id=r.member_id,
        request_id=r.request_id,
        tier_code=r.tier_code,
        tags=tuple(r.tags),
        channel=channel,
        points_hold_id=r.points_hold_id,
    )


def rule(r: coupons_pb2.PostPaymentRule, now: datetime) -> Rule:
    return Rule(
        mall_id=r.mall_id,
        rule_id=r.rule_id,
        stock_id=r.stock_id,
        owner_tenant="",
        min_amount_fen=r.min_amount_fen,
        tenant_ids=tuple(r.tenant_ids),
        starts_at=to_datetime(r.starts_at) if r.HasField("starts_at") else now,
        ends_at=_when(r.ends_at, r.HasField("ends_at")),
        enabled=r.enabled,
    )


def rule_message(r: Rule) -> coupons_pb2.PostPaymentRule:
    message = coupons_pb2.PostPaymentRule(
        mall_id=r.mall_id,
        rule_id=r.rule_id,
        stock_id=r.stock_id,
        min_amount_fen=r.min_amount_fen,
        tenant_ids=r.tenant_ids,
        starts_at=timestamp(r.starts_at),
        enabled=r.enabled,
        version=r.version,
    )
    if r.ends_at is not None:
        message.ends_at.CopyFrom(timestamp(r.ends_at))
    return message


def code(c: coupons_pb2.ClaimCode) -> Code:
    channel = _CHANNEL_OF.get(c.channel)
    return Code(
        mall_id=c.mall_id,
        code=c.code,
        stock_id=c.stock_id,
        channel=channel.value if channel is not None else "",
        guide_id=c.guide_id,
    )


def code_message(c: Code) -> coupons_pb2.ClaimCode:
    return coupons_pb2.ClaimCode(
        mall_id=c.mall_id,
        code=c.code,
        stock_id=c.stock_id,
        channel=CHANNELS[Channel(c.channel)],
        guide_id=c.guide_id,
    )
