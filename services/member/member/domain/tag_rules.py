"""Tag rules: a mall tags members automatically by recent spend at tenants of a category
(e.g. "spent at a sports tenant in the last 30 days" → ``sporty``)."""

from __future__ import annotations

from dataclasses import dataclass

from kit.errors import InvalidInput

from member.domain.tags import check_tag


@dataclass(frozen=True)
class TagRule:
    tag: str
    tenant_category: str
    window_days: int
    min_spend_fen: int = 1

    def __post_init__(self) -> None:
        check_tag(self.tag)
        if not self.tenant_category.strip() or len(self.tenant_category) > 64:
            raise InvalidInput("invalid_category", "tenant_category is 1-64 characters")
        if not 1 <= self.window_days <= 365:
            raise InvalidInput("invalid_window", "window_days is 1-365")
        if self.min_spend_fen < 1:
            raise InvalidInput("invalid_min_spend", "min_spend_fen is at least 1")
