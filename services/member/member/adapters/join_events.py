"""Contract events for joins outside the payment path and for tier changes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from eventbus.outbox import OutgoingEvent, event
from kit.proto import timestamp
from mall.member.v1 import events_pb2, member_pb2

from member.adapters.events import CHANNELS, MEMBER_JOINED
from member.domain.benefits import Benefit, Change, benefit_changes
from member.domain.model import JoinChannel
from member.domain.tiers import TierLadder

TIER_CHANGED = "member.tier.changed"
BENEFITS_CHANGED = "member.benefits.changed"

REASONS = {
    "spend": events_pb2.TIER_CHANGE_REASON_SPEND,
    "review": events_pb2.TIER_CHANGE_REASON_REVIEW,
    "merge": events_pb2.TIER_CHANGE_REASON_MERGE,
}
_CHANGES = {
    Change.GAINED: events_pb2.BENEFIT_CHANGE_GAINED,
    Change.LOST: events_pb2.BENEFIT_CHANGE_LOST,
    Change.CHANGED: events_pb2.BENEFIT_CHANGE_CHANGED,
}


def member_joined(
    *, mall_id: str, member_id: str, channel: JoinChannel, tier_code: str, at: datetime
) -> OutgoingEvent:
    msg = events_pb2.MemberJoined(
        occurred_at=timestamp(at),
        member_id=member_id,
        channel=CHANNELS[channel],
        tier_code=tier_code,
    )
    return event(MEMBER_JOINED, msg, mall_id=mall_id)


def tier_changed(
    *,
    mall_id: str,
    member_id: str,
    previous: str,
    current: str,
    reason: str,
    at: datetime,
    headers: dict[str, str] | None = None,
) -> OutgoingEvent:
    msg = events_pb2.TierChanged(
        occurred_at=timestamp(at),
        member_id=member_id,
        previous_tier_code=previous,
        tier_code=current,
        reason=REASONS[reason],
    )
    return event(TIER_CHANGED, msg, mall_id=mall_id, headers=headers)


def _benefit(b: Benefit) -> member_pb2.TierBenefit:
    return member_pb2.TierBenefit(
        benefit_code=b.benefit_code, title=b.title, description=b.description
    )


def tier_message(ladder: TierLadder, tier_code: str, lines: Sequence[Benefit]) -> member_pb2.Tier:
    tier = ladder.tier(tier_code)
    return member_pb2.Tier(
        tier_code=tier_code,
        name=tier.name if tier else "",
        rank=tier.rank if tier else 0,
        benefits=[_benefit(b) for b in lines],
    )


def tier_change_events(
    *,
    ladder: TierLadder,
    benefits: Mapping[str, Sequence[Benefit]],
    mall_id: str,
    member_id: str,
    previous: str,
    current: str,
    reason: str,
    at: datetime,
    headers: dict[str, str] | None = None,
) -> list[OutgoingEvent]:
    """``member.tier.changed`` then ``member.benefits.changed`` (权益变更提醒): the old and
    new tier with their benefits and the lines that differ, for the shopper's live push."""
    before, after = benefits.get(previous, ()), benefits.get(current, ())
    notice = events_pb2.BenefitsChanged(
        occurred_at=timestamp(at),
        member_id=member_id,
        previous_tier=tier_message(ladder, previous, before),
        tier=tier_message(ladder, current, after),
        reason=REASONS[reason],
        changes=[
            events_pb2.ChangedBenefit(change=_CHANGES[change], benefit=_benefit(line))
            for change, line in benefit_changes(before, after)
        ],
    )
    return [
        tier_changed(
            mall_id=mall_id,
            member_id=member_id,
            previous=previous,
            current=current,
            reason=reason,
            at=at,
            headers=headers,
        ),
        event(BENEFITS_CHANGED, notice, mall_id=mall_id, headers=headers),
    ]
