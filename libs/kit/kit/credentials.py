"""The hash of a tenant, car-park or CRM caller's secret, and the check of its
``x-mall-credential`` against it.

``member`` issues credentials and stores and publishes only a salted scrypt hash of each secret,
self-describing (``scrypt$n$r$p$salt$digest``) so the parameters can be raised later without
invalidating issued credentials; a service that keeps a local copy verifies callers with
``parse_presented`` and ``verify_secret``, without calling member, and remembers the callers it
verified in ``VerifiedCallers``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from kit.errors import Unauthenticated

T = TypeVar("T")

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


class VerifiedCallers(Generic[T]):
    """Callers whose credential was verified in the last ``cache_s``, by the presented value's
    hash: the scrypt check runs once per credential and process in that time (so a revoked one
    keeps working here for at most that long), and the calls that present one at the same
    moment — a POS's or a gate's burst at start, everyone when the entry expires — share that
    one check instead of each paying it."""

    def __init__(self, *, cache_s: float = 30.0, max_entries: int = 10_000) -> None:
        self._cache_s = cache_s
        self._max_entries = max_entries
        self._verified: dict[bytes, tuple[float, T]] = {}
        self._checking: dict[bytes, asyncio.Future[T]] = {}

    async def get(self, presented: str, check: Callable[[str], Awaitable[T]]) -> T:
        """The caller behind ``presented``, from ``check(presented)`` when not known; what
        ``check`` raises reaches every call that waited for it, and nothing is remembered."""
        key = hashlib.sha256(presented.encode()).digest()
        hit = self._verified.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        pending = self._checking.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._checking[key] = future
        try:
            caller = await check(presented)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters re-raise it, nobody logs it as lost
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._checking.pop(key, None)
        future.set_result(caller)
        now = time.monotonic()
        if len(self._verified) >= self._max_entries:
            self._verified = {k: v for k, v in self._verified.items() if v[0] > now}
            if len(self._verified) >= self._max_entries:
                self._verified.clear()
        self._verified[key] = (now + self._cache_s, caller)
        return caller
