"""Members as the API shows them: profile → ``member.v1.Member``."""

from __future__ import annotations

from kit.proto import timestamp
from mall.member.v1 import member_pb2

from member.adapters.events import CHANNELS
from member.domain.joining import mask_phone
from member.domain.model import JoinChannel
from member.domain.tags import MemberProfile

_STATUSES = {
    "active": member_pb2.MEMBER_STATUS_ACTIVE,
    "merged": member_pb2.MEMBER_STATUS_MERGED,
    "closed": member_pb2.MEMBER_STATUS_CLOSED,
}


def profile_message(p: MemberProfile) -> member_pb2.Member:
    channel = (
        CHANNELS[JoinChannel(p.join_channel)]
        if p.join_channel in JoinChannel.__members__.values()
        else member_pb2.JOIN_CHANNEL_UNSPECIFIED
    )
    return member_pb2.Member(
        member_id=p.member_id,
        mall_id=p.mall_id,
        tier_code=p.tier_code,
        status=_STATUSES.get(p.status, member_pb2.MEMBER_STATUS_UNSPECIFIED),
        joined_at=timestamp(p.joined_at),
        phone_masked=mask_phone(p.phone),
        tags=list(p.tags),
        join_channel=channel,
        merged_into_member_id=p.merged_into,
    )
