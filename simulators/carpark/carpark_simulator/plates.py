"""Licence plates as a car park's cameras read them: plausible Chinese plates, blue or green."""

from __future__ import annotations

import random

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, no O
CHARS = LETTERS + "0123456789"


def random_plate(rng: random.Random, *, new_energy: bool = False) -> tuple[str, str]:
    """(plate number, colour name): 7 characters on blue, 8 on green (new-energy)."""
    head = rng.choice(PROVINCES) + rng.choice(LETTERS)
    if new_energy:
        return head + rng.choice("DF") + "".join(rng.choices(CHARS, k=5)), "GREEN"
    return head + "".join(rng.choices(CHARS, k=5)), "BLUE"
