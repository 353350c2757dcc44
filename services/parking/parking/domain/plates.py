"""Chinese licence plates: normalise what a camera or a shopper typed, refuse what is not one.

A plate is a province character, the letter of the issuing city, then 5 characters (fuel cars;
the last may be a special character such as 学 or 警) or 6 (new-energy, green plates). Letters
I and O are never used, so they cannot be confused with 1 and 0.
"""

from __future__ import annotations

import enum
import re

from kit.errors import InvalidInput

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_CHAR = "A-HJ-NP-Z0-9"
_SPECIAL = "挂学警港澳领使"
_FUEL = re.compile(f"[{PROVINCES}][A-HJ-NP-Z](?:[{_CHAR}]{{5}}|[{_CHAR}]{{4}}[{_SPECIAL}])")
_NEW_ENERGY = re.compile(f"[{PROVINCES}][A-HJ-NP-Z][{_CHAR}]{{6}}")


class Color(enum.Enum):
    """Plate colours, named as WeChat Pay pay-score parking names them."""

    BLUE = "BLUE"
    GREEN = "GREEN"
    YELLOW = "YELLOW"
    BLACK = "BLACK"
    WHITE = "WHITE"
    LIMEGREEN = "LIMEGREEN"

    @property
    def new_energy(self) -> bool:
        return self in (Color.GREEN, Color.LIMEGREEN)


def normalise(number: str) -> str:
    """Upper case, without the spaces, dots and middle dots people type (粤B·12345)."""
    return "".join(ch for ch in number.upper() if ch not in " ·.-\u3000")


def validate_plate(number: str, color: Color | None) -> str:
    """The normalised plate, or InvalidInput(invalid_plate) saying why not.

    Without a colour (a camera that could not tell) only the shape is checked.
    """
    plate = normalise(number)
    fuel = _FUEL.fullmatch(plate) is not None
    new_energy = _NEW_ENERGY.fullmatch(plate) is not None
    if not (fuel or new_energy):
        raise InvalidInput("invalid_plate", f"{number!r} is not a Chinese licence plate")
    if color is not None and color.new_energy != new_energy:
        expected = "8 characters" if color.new_energy else "7 characters"
        raise InvalidInput(
            "invalid_plate", f"a {color.value} plate has {expected}; {plate!r} does not"
        )
    return plate
