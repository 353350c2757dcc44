"""Contract events for joins outside the payment path and for tier changes."""

from __future__ import annotations

from datetime import datetime

from eventbus.outbox import OutgoingEvent, event
from kit.proto import timestamp
from mall.member.v1 import events_pb2

from member.adapters.events import CHANNELS, MEMBER_JOINED
from member.domain.model import JoinChannel

TIER_CHANGED = "member.tier.changed"

REASONS = {
    "spend": events_pb2.TIER_CHANGE_REASON_SPEND,
    "review": events_pb2.TIER_CHANGE_REASON_REVIEW,
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
