"""One member per person per mall: linking identities, and merging two members into one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from eventbus.outbox import OutgoingEvent, add_events, event
from kit.db import Connection
from kit.errors import Conflict, NotFound
from kit.proto import timestamp
from mall.member.v1 import events_pb2

from member.adapters import join_events, merges, profiles, repository, tag_rules, tiers
from member.domain.joining import normalise_phone
from member.domain.merges import MergeRequest, check_identity, merged_tier
from member.domain.tags import MemberProfile
from member.domain.tiers import next_review, spend_window_start

log = structlog.get_logger(__name__)

IDENTITY_MERGED = "member.identity.merged"


@dataclass(frozen=True)
class MergeOutcome:
    survivor: MemberProfile
    duplicate: bool
    merged_at: datetime


async def _profile(conn: Connection, mall_id: str, member_id: str) -> MemberProfile:
    found = await profiles.profile(conn, mall_id, member_id)
    assert found is not None, "a member found under lock"
    return found


async def link_identity(
    conn: Connection, *, mall_id: str, member_id: str, kind: str, value: str
) -> tuple[MemberProfile, bool]:
    """Inside the caller's transaction: (the member, whether it held the identity already).
    An identity held by another member is refused (``identity_held_by_other_member``) and
    nothing changes; so is a link to a member that is no longer active."""
    check_identity(kind, value)
    if kind == "phone":
        value = normalise_phone(value)
    if await repository.get_member(conn, mall_id, member_id) is None:
        raise NotFound("member_not_found", "no such member in this mall")
    state = await merges.lock_for_merge(conn, mall_id, [member_id])
    if state[member_id].status != "active":
        raise Conflict("member_not_active", f"member {member_id} is {state[member_id].status}")
    before = await merges.identity_holder(conn, mall_id, kind, value)
    holder = before or await merges.claim_identity(conn, mall_id, kind, value, member_id)
    if holder != member_id:
        raise Conflict(
            "identity_held_by_other_member",
            f"this {kind} belongs to another member of the mall; merge the two instead",
            holder_member_id=holder,
        )
    return await _profile(conn, mall_id, member_id), before is not None


async def merge_members(
    conn: Connection, request: MergeRequest, now: datetime | None = None
) -> MergeOutcome:
    """Inside the caller's transaction: fold ``merged`` into ``survivor`` (see
    ``member.domain.merges``). A repeat of the request id answers the first outcome; another
    merge of a member already merged, or into one, is refused (``member_not_active``)."""
    now = now or datetime.now(UTC)
    mall_id, survivor_id, merged_id = (
        request.mall_id,
        request.survivor_member_id,
        request.merged_member_id,
    )
    for member_id in (survivor_id, merged_id):
        if await repository.get_member(conn, mall_id, member_id) is None:
            raise NotFound("member_not_found", f"no member {member_id} in this mall")
    state = await merges.lock_for_merge(conn, mall_id, [survivor_id, merged_id])
    done = await merges.find_merge(conn, mall_id, request.merge_request_id)
    if done is not None:  # checked under the locks: a concurrent repeat sees the first one
        if (done.survivor_member_id, done.merged_member_id) != (survivor_id, merged_id):
            raise Conflict(
                "merge_request_reused", "this merge_request_id was used for other members"
            )
        return MergeOutcome(await _profile(conn, mall_id, survivor_id), True, done.merged_at)
    for member_id in (survivor_id, merged_id):
        if state[member_id].status != "active":
            raise Conflict(
                "member_not_active",
                f"member {member_id} is {state[member_id].status}; it cannot be merged",
                member_id=member_id,
            )
    survivor, merged = state[survivor_id], state[merged_id]
    moved = await merges.move_member_data(conn, mall_id, survivor_id, merged_id)
    await merges.mark_merged(conn, mall_id, survivor_id, merged_id, now)
    await merges.record_merge(
        conn,
        mall_id=mall_id,
        merge_request_id=request.merge_request_id,
        survivor=survivor,
        merged=merged,
        operator=request.operator,
        reason=request.reason,
        moved_payments=moved,
        at=now,
    )
    outgoing: list[OutgoingEvent] = [
        event(
            IDENTITY_MERGED,
            events_pb2.IdentityMerged(
                occurred_at=timestamp(now),
                survivor_member_id=survivor_id,
                merged_member_id=merged_id,
                merge_request_id=request.merge_request_id,
            ),
            mall_id=mall_id,
        )
    ]
    outgoing += await _survivor_tier(conn, mall_id, survivor, merged, now)
    await add_events(conn, outgoing)
    await tag_rules.evaluate(conn, mall_id, now, [survivor_id])  # their spend is one now
    log.info(
        "members_merged",
        mall_id=mall_id,
        survivor_member_id=survivor_id,
        merged_member_id=merged_id,
        operator=request.operator,
        moved_payments=moved,
    )
    return MergeOutcome(await _profile(conn, mall_id, survivor_id), False, now)


async def _survivor_tier(
    conn: Connection,
    mall_id: str,
    survivor: merges.MemberState,
    merged: merges.MemberState,
    now: datetime,
) -> list[OutgoingEvent]:
    """The survivor takes the better tier of the two (or what the combined spend earns) and
    the review date that comes with it; the tier events if its tier changed."""
    ladder = (await tiers.ladders(conn, [mall_id]))[mall_id]
    key = (mall_id, survivor.member_id)
    spend = (await tiers.spends(conn, [key], spend_window_start(now)))[key]
    tier_code = merged_tier(ladder, survivor.tier_code, merged.tier_code, spend)
    if tier_code == survivor.tier_code:
        return []
    if tier_code == ladder.lowest.tier_code:
        review_at = None
    elif tier_code == merged.tier_code and merged.tier_review_at is not None:
        review_at = merged.tier_review_at
    else:
        review_at = next_review(now)
    await tiers.set_tier(conn, mall_id, survivor.member_id, tier_code, review_at)
    return join_events.tier_change_events(
        ladder=ladder,
        benefits=await tiers.benefits(conn, mall_id),
        mall_id=mall_id,
        member_id=survivor.member_id,
        previous=survivor.tier_code,
        current=tier_code,
        reason="merge",
        at=now,
    )
