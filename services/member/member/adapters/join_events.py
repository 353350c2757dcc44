"""Contract events for joins outside the payment path and for tier changes."""

from __future__ import annotations

import uuid
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
    event_id = str(uuid.uuid4())
    msg = events_pb2.MemberJoined(
        event_id=event_id,
        mall_id=mall_id,
        occurred_at=timestamp(at),
        member_id=member_id,
        channel=CHANNELS[channel],
        tier_code=tier_code,
    )
    return event(MEMBER_JOINED, msg, mall_id=mall_id, event_id=event_id)


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
    event_id = str(uuid.uuid4())
    msg = events_pb2.TierChanged(
        event_id=event_id,
        mall_id=mall_id,
        occurred_at=timestamp(at),
        member_id=member_id,
        previous_tier_code=previous,
        tier_code=current,
        reason=REASONS[reason],
    )
    return event(TIER_CHANGED, msg, mall_id=mall_id, event_id=event_id, headers=headers)
