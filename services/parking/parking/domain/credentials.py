"""Checking a car-park system's credential locally, against the hash member distributes.

member stores ``scrypt$n$r$p$salt$digest`` (see member.domain.credentials) and publishes it in
member.directory.credential_upserted; parking keeps a copy and verifies the secret presented
in ``x-mall-credential: <credential_id>.<secret>`` without calling member.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from kit.errors import Unauthenticated


@dataclass(frozen=True)
class CarParkCaller:
    mall_id: str
    car_park_id: str
    credential_id: str


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_secret(secret: str, encoded: str) -> bool:
    """Constant-time check of a secret against its stored hash; False for a malformed hash."""
    try:
        algorithm, n, r, p, salt, digest = encoded.split("$")
        if algorithm != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            secret.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=128 * int(r) * int(n) * 2,
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def parse_presented(value: str) -> tuple[str, str]:
    """``<credential_id>.<secret>`` → (credential_id, secret); refuses anything else."""
    credential_id, dot, secret = value.strip().partition(".")
    if not dot or not credential_id or not secret:
        raise Unauthenticated("invalid_credential", "malformed x-mall-credential")
    return credential_id, secret
