"""Redemption rules: hold points for a reward, then confirm or release; manual adjustments.

Pure Python. A hold reserves points (they stop being available, the balance is unchanged);
confirming spends them, releasing (by the caller, or by expiry) gives them back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from kit.errors import Conflict, InvalidInput

REWARD_KINDS = frozenset({"coupon", "parking", "gift"})


class HoldState(enum.StrEnum):
    HELD = "HELD"
    CONFIRMED = "CONFIRMED"
    RELEASED = "RELEASED"


class ReleaseReason(enum.StrEnum):
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Step(enum.Enum):
    """What a ConfirmHold / ReleaseHold does with the hold it found."""

    APPLY = "apply"  # HELD: make the transition
    DONE = "done"  # already in the wanted state: answer as before (idempotent)


def _required(**fields: str) -> None:
    for name, value in fields.items():
        if not value:
            raise InvalidInput("missing_field", f"{name} is required")


@dataclass(frozen=True)
class HoldRequest:
    mall_id: str
    member_id: str
    points: int
    reward_kind: str
    reward_ref: str
    request_id: str

    def __post_init__(self) -> None:
        _required(
            mall_id=self.mall_id,
            member_id=self.member_id,
            reward_ref=self.reward_ref,
            request_id=self.request_id,
        )
        if self.reward_kind not in REWARD_KINDS:
            raise InvalidInput("missing_field", "reward_kind is required")
        if self.points <= 0:
            raise InvalidInput("invalid_points", f"points must be > 0, got {self.points}")


@dataclass(frozen=True)
class Hold:
    mall_id: str
    hold_id: str
    member_id: str
    points: int
    reward_kind: str
    reward_ref: str
    request_id: str
    state: HoldState
    expires_at: datetime
    redemption_id: str | None = None

    def expired(self, now: datetime) -> bool:
        return self.state is HoldState.HELD and self.expires_at <= now

    def answers(self, request: HoldRequest) -> bool:
        """Whether this hold is what ``request`` asked for (a retry, not a reused key)."""
        return (self.member_id, self.points, self.reward_kind, self.reward_ref) == (
            request.member_id,
            request.points,
            request.reward_kind,
            request.reward_ref,
        )


def ensure_available(available: int, points: int) -> None:
    """Refuse to take more points than the account can spend now."""
    if points > available:
        raise Conflict(
            "insufficient_points",
            f"{points} points asked, {max(available, 0)} available",
            available=str(available),
        )


def not_held(hold: Hold, now: datetime) -> Conflict:
    state = HoldState.RELEASED if hold.expired(now) else hold.state
    return Conflict("hold_not_held", f"hold {hold.hold_id} is {state.lower()}", state=state.value)


def confirm_step(hold: Hold, now: datetime) -> Step:
    """Confirming twice is fine; a released or timed-out hold cannot be spent."""
    if hold.state is HoldState.CONFIRMED:
        return Step.DONE
    if hold.state is HoldState.RELEASED or hold.expired(now):
        raise not_held(hold, now)
    return Step.APPLY


def release_step(hold: Hold, now: datetime) -> Step:
    """Releasing twice is fine (a timed-out hold is released already); points already spent
    cannot be given back this way."""
    if hold.state is HoldState.RELEASED or hold.expired(now):
        return Step.DONE
    if hold.state is HoldState.CONFIRMED:
        raise not_held(hold, now)
    return Step.APPLY


@dataclass(frozen=True)
class Adjustment:
    """A manual correction by ops: signed points, with why and who."""

    mall_id: str
    member_id: str
    points: int
    reason: str
    operator: str
    request_id: str

    def __post_init__(self) -> None:
        _required(
            mall_id=self.mall_id,
            member_id=self.member_id,
            reason=self.reason.strip(),
            operator=self.operator.strip(),
            request_id=self.request_id,
        )
        if self.points == 0:
            raise InvalidInput("invalid_points", "points must not be 0")

    def ensure_possible(self, available: int) -> None:
        """A removal may not take points that are not available (held or missing)."""
        if self.points < 0:
            ensure_available(available, -self.points)


def request_id_reused(request_id: str) -> Conflict:
    return Conflict(
        "request_id_reused", f"request_id {request_id} was used for a different request"
    )
