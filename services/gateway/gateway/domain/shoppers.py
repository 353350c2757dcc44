"""Who a mini-program request speaks for, and the member card it may see.

A ``Session`` is what the gateway's own token says: the mall (from the mini-program's appid),
the shopper's openid there, and their member id once they are a member. Every ``/v1/me`` call
answers for exactly this session; no request field can name another shopper.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Session:
    mall_id: str
    openid: str
    member_id: str | None = None
    unionid: str | None = None

    def with_member(self, member_id: str) -> Session:
        return Session(self.mall_id, self.openid, member_id, self.unionid)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    #: Seconds the access token is good for, and the refresh token.
    expires_in: int
    refresh_expires_in: int

    def as_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "refresh_expires_in": self.refresh_expires_in,
        }


@dataclass(frozen=True)
class WechatIdentity:
    """What code-to-session tells about the shopper."""

    openid: str
    unionid: str | None = None


@dataclass(frozen=True)
class MemberCard:
    member_id: str
    mall_id: str
    tier_code: str
    status: str
    joined_at: datetime | None
    phone_masked: str
    #: For a member merged into another (same person): the survivor's id.
    merged_into: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "mall_id": self.mall_id,
            "tier_code": self.tier_code,
            "status": self.status,
            "joined_at": self.joined_at.isoformat() if self.joined_at else None,
            "phone_masked": self.phone_masked or None,
        }

    def summary(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "tier_code": self.tier_code}
