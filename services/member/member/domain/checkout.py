"""Checkout codes (会员识别): what the shopper shows, what the POS scans.

An 18-digit number, like WeChat's dynamic member codes, drawn from the OS's CSPRNG (~60 bits):
a fresh one per request, valid for ``code_ttl_s``, used once. Only its SHA-256 is stored;
its entropy and short life make a salt and a slow hash unnecessary.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from kit.errors import InvalidInput

CODE_DIGITS = 18
_CODE = re.compile(rf"^[0-9]{{{CODE_DIGITS}}}$")


@dataclass(frozen=True)
class CheckoutPolicy:
    code_ttl_s: float = 60.0
    #: How far in the future a POS may date a reported payment (clock skew between tills).
    clock_skew_s: float = 300.0


@dataclass(frozen=True)
class IssuedCode:
    code: str
    expires_at: datetime


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_hash(code: str) -> bytes:
    if not _CODE.fullmatch(code):
        raise InvalidInput("invalid_checkout_code", f"a checkout code is {CODE_DIGITS} digits")
    return hashlib.sha256(code.encode()).digest()
