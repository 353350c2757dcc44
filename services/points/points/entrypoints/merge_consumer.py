"""member.identity.merged → move the absorbed member's points to the survivor."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.consumer import Delivery
from kit.db import Connection
from mall.member.v1 import events_pb2 as member_events

from points.service_layer.merges import MemberMerged, follow_merges

IDENTITY_MERGED = "member.identity.merged"


def _merged(d: Delivery) -> MemberMerged:
    msg = d.decode(member_events.IdentityMerged)
    return MemberMerged(
        event_id=d.event_id,
        mall_id=msg.mall_id,
        survivor_member_id=msg.survivor_member_id,
        merged_member_id=msg.merged_member_id,
        merge_request_id=msg.merge_request_id,
    )


async def on_identity_merged(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    await follow_merges(conn, [_merged(d) for d in deliveries])
