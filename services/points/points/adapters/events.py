"""Translate points outcomes into contract events for the outbox."""

from __future__ import annotations

from eventbus.outbox import OutgoingEvent, event
from kit.proto import timestamp
from mall.points.v1 import events_pb2, points_pb2

from points.adapters.lots import ExpiredLot, ExpiringLot
from points.domain.model import AttributedRefund, Credit
from points.domain.redemption import Hold, ReleaseReason

#: Reward kinds of the domain (text in the database) and of the contracts.
REWARD_KINDS: dict[str, points_pb2.RewardKind.ValueType] = {
    "coupon": points_pb2.REWARD_KIND_COUPON,
    "parking": points_pb2.REWARD_KIND_PARKING,
    "gift": points_pb2.REWARD_KIND_GIFT,
}
_RELEASE_REASONS = {
    ReleaseReason.CANCELLED: events_pb2.HOLD_RELEASE_REASON_CANCELLED,
    ReleaseReason.EXPIRED: events_pb2.HOLD_RELEASE_REASON_EXPIRED,
}

POINTS_CREDITED = "points.points.credited"


def points_credited(credit: Credit, headers: dict[str, str]) -> OutgoingEvent:
    p = credit.payment
    msg = events_pb2.PointsCredited(
        member_id=p.member_id,
        transaction_id=p.transaction_id,
        points=credit.points,
        balance_after=credit.balance_after,
        rule_version=credit.rule_version,
        appid=p.appid,
        openid=p.openid,
        amount_fen=p.amount_fen,
        paid_at=timestamp(p.paid_at),
        tenant_id=p.tenant_id,
    )
    return event(POINTS_CREDITED, msg, mall_id=p.mall_id, headers=headers)


POINTS_REVERSED = "points.points.reversed"


def points_reversed(
    refund: AttributedRefund, points: int, balance_after: int, headers: dict[str, str]
) -> OutgoingEvent:
    msg = events_pb2.PointsReversed(
        member_id=refund.member_id,
        transaction_id=refund.transaction_id,
        refund_id=refund.refund_id,
        points=points,
        balance_after=balance_after,
        appid=refund.appid,
        openid=refund.openid,
    )
    return event(POINTS_REVERSED, msg, mall_id=refund.mall_id, headers=headers)


POINTS_REDEEMED = "points.points.redeemed"


def points_redeemed(hold: Hold, redemption_id: str, balance_after: int) -> OutgoingEvent:
    msg = events_pb2.PointsRedeemed(
        member_id=hold.member_id,
        redemption_id=redemption_id,
        hold_id=hold.hold_id,
        points=hold.points,
        reward_kind=REWARD_KINDS[hold.reward_kind],
        reward_ref=hold.reward_ref,
        balance_after=balance_after,
    )
    return event(POINTS_REDEEMED, msg, mall_id=hold.mall_id)


POINTS_HOLD_RELEASED = "points.hold.released"


def points_hold_released(hold: Hold, reason: ReleaseReason) -> OutgoingEvent:
    msg = events_pb2.PointsHoldReleased(
        member_id=hold.member_id,
        hold_id=hold.hold_id,
        points=hold.points,
        reason=_RELEASE_REASONS[reason],
        reward_kind=REWARD_KINDS[hold.reward_kind],
        reward_ref=hold.reward_ref,
    )
    return event(POINTS_HOLD_RELEASED, msg, mall_id=hold.mall_id)


POINTS_EXPIRED = "points.points.expired"


def points_expired(lot: ExpiredLot, balance_after: int) -> OutgoingEvent:
    """One per lot; ``balance_after`` is the member's balance once the whole expiry run
    (every lot of the member in it: one ledger entry) is applied."""
    msg = events_pb2.PointsExpired(
        member_id=lot.member_id,
        lot_id=lot.lot_id,
        points=lot.points,
        balance_after=balance_after,
    )
    return event(POINTS_EXPIRED, msg, mall_id=lot.mall_id)


POINTS_EXPIRING = "points.points.expiring"


def points_expiring(lot: ExpiringLot) -> OutgoingEvent:
    """One per lot, once: the reminder some days before the lot expires."""
    msg = events_pb2.PointsExpiring(
        member_id=lot.member_id,
        lot_id=lot.lot_id,
        points=lot.points,
        expires_at=timestamp(lot.expires_at),
    )
    return event(POINTS_EXPIRING, msg, mall_id=lot.mall_id)
