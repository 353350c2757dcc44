"""Merging two members found to be one person, and linking identities to a member.

One member per person per mall: an identity (openid, unionid, phone, card, app account)
belongs to at most one member. Linking an identity another member holds is refused; ops
merge the two instead. The merged member's identities, payments, tags and better tier go to
the survivor, and the merged member stays behind as MERGED, pointing at it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kit.errors import InvalidInput

from member.domain.tiers import TierLadder

IDENTITY_KINDS = frozenset({"openid", "unionid", "phone", "card", "app_account"})
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,64}$")


@dataclass(frozen=True)
class MergeRequest:
    mall_id: str
    survivor_member_id: str
    merged_member_id: str
    merge_request_id: str
    operator: str
    reason: str

    def __post_init__(self) -> None:
        missing = [
            name
            for name in (
                "mall_id",
                "survivor_member_id",
                "merged_member_id",
                "merge_request_id",
                "operator",
                "reason",
            )
            if not getattr(self, name).strip()
        ]
        if missing:
            raise InvalidInput("missing_field", f"required: {', '.join(missing)}")
        if not _REQUEST_ID.fullmatch(self.merge_request_id):
            raise InvalidInput(
                "invalid_merge_request_id", "merge_request_id is 1-64 printable ASCII characters"
            )
        if self.survivor_member_id == self.merged_member_id:
            raise InvalidInput("merge_with_itself", "a member cannot be merged into itself")
        if len(self.reason) > 500 or len(self.operator) > 200:
            raise InvalidInput("field_too_long", "operator <= 200, reason <= 500 characters")


def merged_tier(ladder: TierLadder, survivor: str, merged: str, spend_fen: int) -> str:
    """The survivor's tier after the merge: the better of the two members' tiers, or what
    their combined spend earns if that is better still."""
    candidates = [survivor, merged, ladder.earned(spend_fen).tier_code]
    return max(candidates, key=ladder.rank_of)


def check_identity(kind: str, value: str) -> None:
    if kind not in IDENTITY_KINDS:
        raise InvalidInput("invalid_identity_type", "identity needs a type")
    if not value or len(value) > 128 or value != value.strip():
        raise InvalidInput("invalid_identity", "identity value is 1-128 characters, no padding")
