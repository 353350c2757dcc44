"""Checking a tenant or car-park caller's ``x-mall-credential`` against a stored hash.

``member`` issues credentials and publishes only a self-describing scrypt hash of each secret
(``scrypt$n$r$p$salt$digest``, see member.domain.credentials); a service that keeps a local
copy of them verifies callers with these two functions, without calling member.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from kit.errors import Unauthenticated

CREDENTIAL_HEADER = "x-mall-credential"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_presented(value: str) -> tuple[str, str]:
    """``<credential_id>.<secret>`` → (credential_id, secret); refuses anything else."""
    credential_id, dot, secret = value.strip().partition(".")
    if not dot or not credential_id or not secret:
        raise Unauthenticated("invalid_credential", f"malformed {CREDENTIAL_HEADER}")
    return credential_id, secret


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
