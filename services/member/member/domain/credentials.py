"""Credentials of tenant POS and car-park systems, and what a tenant caller may touch.

A credential is a public id plus a random secret, presented together in gRPC metadata as
``x-mall-credential: <credential_id>.<secret>``. Only a salted scrypt hash of the secret is
stored, in a self-describing form (``scrypt$n$r$p$salt$digest``) so the parameters can be
raised later without invalidating issued credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from kit.errors import Forbidden, InvalidInput, Unauthenticated

_N, _R, _P = 2**14, 8, 1  # ~16 MiB and a few tens of ms per check; results are cached


@dataclass(frozen=True)
class Principal:
    """Who a verified credential speaks for."""

    mall_id: str
    credential_id: str
    tenant_id: str = ""
    car_park_id: str = ""
    scope: str = ""  # "crm": the mall's CRM system (mall-level)


def new_credential_id() -> str:
    return f"cred-{secrets.token_hex(8)}"


def new_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits; never contains '.'


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


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


def principal_for(
    tenant_id: str, car_park_id: str, label: str, *, crm: bool = False
) -> tuple[str, str]:
    """Validate a credential request: exactly one principal, a sane label."""
    if [bool(tenant_id), bool(car_park_id), crm].count(True) != 1:
        raise InvalidInput(
            "missing_field", "exactly one of tenant_id, car_park_id or crm is required"
        )
    if len(label) > 200:
        raise InvalidInput("invalid_label", "label is at most 200 characters")
    return tenant_id, car_park_id


def check_tenant_store(
    caller: Principal, mall_id: str, store_id: str, store_tenant_id: str | None
) -> None:
    """A tenant caller acts only in its own mall, at its own stores. An unknown store is
    refused the same way as another tenant's, so callers cannot probe the directory."""
    if not caller.tenant_id:
        raise Forbidden("not_a_tenant_credential", "this RPC needs a tenant credential")
    if mall_id != caller.mall_id:
        raise Forbidden("mall_not_yours", f"the credential is not for mall {mall_id}")
    if store_tenant_id != caller.tenant_id:
        raise Forbidden("store_not_yours", f"store {store_id} is not a store of this tenant")
