"""member.identity.merged → the absorbed member's coupons move to the survivor."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import structlog
from eventbus.consumer import Delivery
from kit.db import Connection
from mall.member.v1 import events_pb2 as member_events

from coupons.service_layer.merges import MemberMerged, follow_merges

IDENTITY_MERGED = "member.identity.merged"

log = structlog.get_logger(__name__)


def _valid(member_id: str) -> bool:
    try:
        uuid.UUID(member_id)
    except ValueError:
        return False
    return True


async def on_identity_merged(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """``coupons-identity-merged``."""
    merged = []
    for d in deliveries:
        msg = d.decode(member_events.IdentityMerged)
        if not (_valid(msg.survivor_member_id) and _valid(msg.merged_member_id)):
            log.warning("identity_merged_ignored", event_id=d.event_id, reason="invalid_member_id")
            continue
        merged.append(
            MemberMerged(
                mall_id=msg.mall_id,
                survivor_member_id=msg.survivor_member_id,
                merged_member_id=msg.merged_member_id,
                merge_request_id=msg.merge_request_id,
            )
        )
    await follow_merges(conn, merged)
