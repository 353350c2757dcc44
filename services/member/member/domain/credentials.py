"""Credentials of tenant POS and car-park systems, and what a tenant caller may touch.

A credential is a public id plus a random secret, presented together in gRPC metadata as
``x-mall-credential: <credential_id>.<secret>``. Only a salted scrypt hash of the secret is
stored (``kit.credentials``, where every service that checks callers finds the same format).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from kit.errors import Forbidden, InvalidInput


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
