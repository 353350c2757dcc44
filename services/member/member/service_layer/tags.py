"""Tags and the member export: ops set a member's tags and page through members."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from kit.db import Connection
from kit.errors import InvalidInput, NotFound

from member.adapters import profiles
from member.domain.tags import MemberProfile, check_tag, normalise_tags

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


async def set_member_tags(
    conn: Connection, mall_id: str, member_id: str, tags: Sequence[str]
) -> MemberProfile:
    """Inside the caller's transaction: the member's manual tags become exactly ``tags``."""
    wanted = normalise_tags(tags)
    if not await profiles.lock_member(conn, mall_id, member_id):
        raise NotFound("member_not_found", "no such member in this mall")
    await profiles.replace_manual_tags(conn, mall_id, member_id, wanted)
    found = await profiles.profile(conn, mall_id, member_id)
    assert found is not None, "locked above"
    return found


async def list_members(
    conn: Connection,
    mall_id: str,
    *,
    page_size: int,
    page_token: str,
    tier_code: str = "",
    tag: str = "",
) -> tuple[list[MemberProfile], str]:
    """One page of the mall's members in member_id order and the token for the next page
    (the last member_id; empty after the last page)."""
    if not mall_id:
        raise InvalidInput("missing_field", "required: mall_id")
    if page_size < 0:
        raise InvalidInput("invalid_page_size", "page_size must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    try:
        after = uuid.UUID(page_token) if page_token else None
    except ValueError:
        raise InvalidInput("invalid_page_token", "page_token is not one this API gave") from None
    if tag:
        check_tag(tag)
    page = await profiles.list_profiles(
        conn, mall_id, after=after, limit=size + 1, tier_code=tier_code, tag=tag
    )
    more = len(page) > size
    page = page[:size]
    return page, page[-1].member_id if more else ""
