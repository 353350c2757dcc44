"""The member card the mini-program opens on: one answer assembled from several services.

A card is made of *sections*, one per service that knows a part of it (``member``: the tier;
``points``: balance and points expiring soon; ``coupons``: usable coupons; ``parking``: today's
parking benefit). A section is ``ok`` with its data, or ``unavailable`` with a reason: the
service did not answer within the section's deadline (``timeout``), answered with an error
(``error``), or is not connected to this gateway yet (``not_connected``). One section failing
never fails the card. Pure Python: the service layer fetches, this module only says what a
card is and how long it may be served from memory.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

#: The card's sections, in the order the card lists them.
SECTIONS = ("member", "points", "coupons", "parking")


class Unavailability(enum.StrEnum):
    TIMEOUT = "timeout"
    ERROR = "error"
    NOT_CONNECTED = "not_connected"


@dataclass(frozen=True)
class Section:
    data: dict[str, Any] | None = None
    unavailable: Unavailability | None = None

    @classmethod
    def ok(cls, data: dict[str, Any]) -> Section:
        return cls(data=data)

    @classmethod
    def missing(cls, why: Unavailability) -> Section:
        return cls(unavailable=why)

    @property
    def transient(self) -> bool:
        """Unavailable now, maybe not in a moment (a fresh read may do better)."""
        return self.unavailable in (Unavailability.TIMEOUT, Unavailability.ERROR)

    def as_json(self) -> dict[str, Any]:
        if self.unavailable is not None:
            return {"status": "unavailable", "reason": self.unavailable.value}
        return {"status": "ok", **(self.data or {})}


@dataclass(frozen=True)
class Card:
    mall_id: str
    member_id: str
    sections: dict[str, Section] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """No section failed for a reason that may pass: the card may be kept the full TTL."""
        return not any(s.transient for s in self.sections.values())

    def ttl_s(self, *, full_s: float, degraded_s: float) -> float:
        """How long this card may be answered from memory (absent a change event)."""
        return full_s if self.complete else min(full_s, degraded_s)

    def as_json(self, *, built_at: str) -> dict[str, Any]:
        return {
            "mall_id": self.mall_id,
            "member_id": self.member_id,
            "built_at": built_at,
            **{
                name: self.sections.get(
                    name, Section.missing(Unavailability.NOT_CONNECTED)
                ).as_json()
                for name in SECTIONS
            },
        }
