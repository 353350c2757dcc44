"""kit.credentials: a presented ``<credential_id>.<secret>`` checked against the stored,
self-describing scrypt hash member publishes (``scrypt$n$r$p$salt$digest``)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from kit.credentials import parse_presented, verify_secret
from kit.errors import Unauthenticated


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def stored(secret: str, salt: bytes = b"0123456789abcdef", n: int = 2**10) -> str:
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=8, p=1, dklen=32)
    return f"scrypt${n}$8$1${_b64(salt)}${_b64(digest)}"


def test_the_right_secret_verifies_and_a_wrong_one_does_not() -> None:
    encoded = stored("s3cret-value")
    assert verify_secret("s3cret-value", encoded)
    assert not verify_secret("s3cret-valuf", encoded)


@pytest.mark.parametrize(
    "encoded", ["", "bcrypt$1$2$3$4$5", "scrypt$x$8$1$c2FsdA$ZGln", "scrypt$1024$8$1"]
)
def test_a_malformed_hash_never_verifies(encoded: str) -> None:
    assert not verify_secret("anything", encoded)


def test_a_presented_credential_is_id_dot_secret() -> None:
    assert parse_presented(" cred-1a2b.sec.ret ") == ("cred-1a2b", "sec.ret")
    for bad in ("", "cred-only", ".secret", "cred."):
        with pytest.raises(Unauthenticated):
            parse_presented(bad)
