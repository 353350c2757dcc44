"""Tier benefits and what a tier change gains or loses (权益变更提醒)."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kit.errors import InvalidInput

_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Benefit:
    benefit_code: str
    title: str
    description: str = ""


def parse_benefit(spec: str) -> Benefit:
    """``code=title[:description]`` (the ops command's spelling) → Benefit."""
    code, eq, rest = spec.partition("=")
    title, _, description = rest.partition(":")
    if not eq or not _CODE.fullmatch(code) or not title.strip():
        raise InvalidInput("invalid_benefit", f"expected code=title[:description], got {spec!r}")
    return Benefit(code, title.strip(), description.strip())


class Change(enum.StrEnum):
    GAINED = "gained"
    LOST = "lost"
    CHANGED = "changed"


#: What the default ladder gives until ops define the mall's own benefits.
DEFAULT_BENEFITS: dict[str, tuple[Benefit, ...]] = {
    "basic": (Benefit("points_1x", "消费积分", "每消费1元积1分"),),
    "silver": (
        Benefit("points_1x", "消费积分", "每消费1元积1分"),
        Benefit("parking_free_2h", "停车2小时免费", "当日消费后停车2小时免费"),
    ),
    "gold": (
        Benefit("points_1x", "消费积分", "每消费1元积1.5分"),
        Benefit("parking_free_2h", "停车2小时免费", "当日消费后停车2小时免费"),
        Benefit("birthday_double_points", "生日双倍积分", "生日当月消费双倍积分"),
    ),
}


def benefit_changes(
    before: Sequence[Benefit], after: Sequence[Benefit]
) -> list[tuple[Change, Benefit]]:
    """The lines that differ, in benefit_code order: gained and changed as the new tier
    gives them, lost as the old one gave them."""
    old = {b.benefit_code: b for b in before}
    new = {b.benefit_code: b for b in after}
    out: list[tuple[Change, Benefit]] = []
    for code in sorted(old.keys() | new.keys()):
        if code not in old:
            out.append((Change.GAINED, new[code]))
        elif code not in new:
            out.append((Change.LOST, old[code]))
        elif old[code] != new[code]:
            out.append((Change.CHANGED, new[code]))
    return out
