"""Member tags: short slugs ops attach for campaigns and segments."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from kit.errors import InvalidInput

MAX_TAGS = 20
_TAG = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def normalise_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """The distinct tags, sorted; each a slug, at most MAX_TAGS of them."""
    distinct = sorted(set(tags))
    bad = [t for t in distinct if not _TAG.fullmatch(t)]
    if bad:
        raise InvalidInput(
            "invalid_tag", f"tags are lower-case slugs of 1-32 characters: {bad[:3]}"
        )
    if len(distinct) > MAX_TAGS:
        raise InvalidInput("too_many_tags", f"at most {MAX_TAGS} tags, got {len(distinct)}")
    return tuple(distinct)


def check_tag(tag: str) -> None:
    if not _TAG.fullmatch(tag):
        raise InvalidInput("invalid_tag", "tag filter must be a lower-case slug")


@dataclass(frozen=True)
class MemberProfile:
    """A member as the API shows them: tier, tags, masked phone."""

    mall_id: str
    member_id: str
    tier_code: str
    status: str
    join_channel: str
    joined_at: datetime
    phone: str  # E.164, or empty
    tags: tuple[str, ...]
    merged_into: str = ""  # for a MERGED member, its survivor
