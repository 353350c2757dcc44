"""Following member merges (member.identity.merged): the absorbed member's coupons, claim keys
and per-member limit counters move to the survivor.

Ordering between services is not guaranteed, so a claim can still name the absorbed member
after the merge was followed here (a post-payment coupon for a payment attributed just before
the merge, a shopper's retry). Claims share-lock their claimants and look for a merge after
the lock (``claims.claim_batch`` makes such a claim for the survivor); the merge locks both
members exclusively. A claim racing the merge thus either commits first and is moved by it, or
waits and lands on the survivor — and the survivor's per-member limit counts both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from kit.db import Connection

from coupons.adapters import merges

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class MemberMerged:
    mall_id: str
    survivor_member_id: str
    merged_member_id: str
    merge_request_id: str


async def follow_merges(conn: Connection, merged: Sequence[MemberMerged]) -> int:
    """Inside the caller's transaction: record each merge and move the absorbed member's
    coupons; how many coupons moved (0 for a merge seen before)."""
    total = 0
    for m in merged:
        if m.merged_member_id == m.survivor_member_id:
            continue
        await merges.lock_for_merge(conn, m.mall_id, m.merged_member_id, m.survivor_member_id)
        await merges.record_merge(
            conn, m.mall_id, m.merged_member_id, m.survivor_member_id, m.merge_request_id
        )
        moved = await merges.move_member(conn, m.mall_id, m.merged_member_id, m.survivor_member_id)
        total += moved
        log.info(
            "member_merge_followed",
            mall_id=m.mall_id,
            survivor_member_id=m.survivor_member_id,
            merged_member_id=m.merged_member_id,
            moved_coupons=moved,
        )
    return total
