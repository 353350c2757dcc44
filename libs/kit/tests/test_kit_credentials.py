"""kit.credentials: a presented ``<credential_id>.<secret>`` checked against the stored,
self-describing scrypt hash member publishes (``scrypt$n$r$p$salt$digest``)."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest
from kit.credentials import VerifiedCallers, parse_presented, verify_secret
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


# -- VerifiedCallers: the check once per credential, shared by the calls that present it at once --


async def test_a_burst_presenting_one_credential_pays_one_check() -> None:
    callers: VerifiedCallers[str] = VerifiedCallers(cache_s=30)
    checks: list[str] = []
    release = asyncio.Event()

    async def check(presented: str) -> str:
        checks.append(presented)
        await release.wait()  # the scrypt check, still running when the rest of the burst comes
        return f"caller of {presented}"

    burst = [asyncio.create_task(callers.get("cred-1.s", check)) for _ in range(32)]
    other = asyncio.create_task(callers.get("cred-2.s", check))
    await asyncio.sleep(0)
    release.set()
    assert set(await asyncio.gather(*burst)) == {"caller of cred-1.s"}
    assert await other == "caller of cred-2.s"
    assert await callers.get("cred-1.s", check) == "caller of cred-1.s"  # remembered
    assert sorted(checks) == ["cred-1.s", "cred-2.s"]


async def test_a_refusal_reaches_every_waiter_and_is_not_remembered() -> None:
    callers: VerifiedCallers[str] = VerifiedCallers(cache_s=30)
    checks = 0
    release = asyncio.Event()

    async def refuse(presented: str) -> str:
        nonlocal checks
        checks += 1
        await release.wait()
        raise Unauthenticated("invalid_credential", "wrong secret")

    waiting = [asyncio.create_task(callers.get("cred-1.bad", refuse)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, Unauthenticated) for o in outcomes)
    assert checks == 1

    async def accept(presented: str) -> str:
        return "now right"

    assert await callers.get("cred-1.bad", accept) == "now right"  # the refusal was not kept


async def test_a_remembered_caller_is_checked_again_after_cache_s() -> None:
    callers: VerifiedCallers[int] = VerifiedCallers(cache_s=0)
    checks = 0

    async def check(presented: str) -> int:
        nonlocal checks
        checks += 1
        return checks

    assert [await callers.get("cred-1.s", check) for _ in range(3)] == [1, 2, 3]
