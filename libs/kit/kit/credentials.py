"""The hash of a tenant, car-park or CRM caller's secret, and the check of its
``x-mall-credential`` against it.

``member`` issues credentials and stores and publishes only a salted scrypt hash of each secret,
self-describing (``scrypt$n$r$p$salt$digest``) so the parameters can be raised later without
invalidating issued credentials; a service that keeps a local copy verifies callers with
``parse_presented`` and ``verify_secret``, without calling member.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from kit.errors import Unauthenticated

CREDENTIAL_HEADER = "x-mall-credential"
_N, _R, _P = 2**14, 8, 1  # ~16 MiB and a few tens of ms per check; verifiers cache results


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


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
