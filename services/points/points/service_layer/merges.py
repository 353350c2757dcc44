"""Following member merges (member.identity.merged): the absorbed member's balance, lots and
holds move to the survivor, and payments or refunds still naming the absorbed member are
booked on the survivor.

Ordering between consumers is not guaranteed: a payment attributed to a member just before
member merged it may be credited after the merge was followed here. So the payment handler
books such payments on the survivor (``redirect``) and, in the same transaction, moves
anything that still landed on an absorbed member (``sweep``, for a merge that committed while
the credit waited for the account lock). Together with the inbox this makes the move exact
and idempotent: the survivor ends with the sum of both members' points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

import structlog
from kit.db import Connection

from points.adapters import merges

log = structlog.get_logger(__name__)


class _ForMember(Protocol):
    @property
    def mall_id(self) -> str: ...

    @property
    def member_id(self) -> str: ...


T = TypeVar("T", bound=_ForMember)


@dataclasses.dataclass(frozen=True)
class MemberMerged:
    event_id: str
    mall_id: str
    survivor_member_id: str
    merged_member_id: str
    merge_request_id: str


async def follow_merges(conn: Connection, merged: Sequence[MemberMerged]) -> None:
    """Inside the caller's transaction: record each merge and move the absorbed account."""
    for m in merged:
        await merges.record_merge(
            conn, m.mall_id, m.merged_member_id, m.survivor_member_id, m.merge_request_id
        )
        moved = await merges.move_account(
            conn,
            m.mall_id,
            m.merged_member_id,
            m.survivor_member_id,
            f"merge:{m.merge_request_id or m.event_id}",
        )
        log.info(
            "member_merge_followed",
            mall_id=m.mall_id,
            survivor_member_id=m.survivor_member_id,
            merged_member_id=m.merged_member_id,
            moved_points=moved,
        )


async def redirect(conn: Connection, items: Sequence[T]) -> list[T]:
    """The items, with those naming an absorbed member naming its survivor instead."""
    to = await merges.survivors(conn, [(i.mall_id, i.member_id) for i in items])
    if not to:
        return list(items)
    return [
        dataclasses.replace(i, member_id=to[(i.mall_id, i.member_id)])  # type: ignore[type-var]
        if (i.mall_id, i.member_id) in to
        else i
        for i in items
    ]


async def sweep(conn: Connection, keys: Iterable[tuple[str, str]]) -> None:
    """Move to the survivor what just landed on a member whose merge committed meanwhile."""
    to = await merges.survivors(conn, sorted(set(keys)))
    for (mall_id, member_id), survivor in sorted(to.items()):
        moved = await merges.move_account(
            conn, mall_id, member_id, survivor, f"merge-sweep:{member_id}"
        )
        if moved:
            log.info("member_merge_swept", mall_id=mall_id, merged_member_id=member_id, moved=moved)
