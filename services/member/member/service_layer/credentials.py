"""Issue, revoke and verify the credentials tenant POS and car-park systems call with."""

from __future__ import annotations

import asyncio

from eventbus.outbox import add_events
from kit.credentials import hash_secret, parse_presented, verify_secret
from kit.db import Connection
from kit.errors import NotFound, Unauthenticated

from member.adapters import checkout as checkout_sql
from member.adapters import credentials as sql
from member.adapters import repository
from member.adapters.credentials import CredentialRow
from member.domain.credentials import (
    Principal,
    check_tenant_store,
    new_credential_id,
    new_secret,
    principal_for,
)


async def issue_credential(
    conn: Connection,
    *,
    mall_id: str,
    tenant_id: str,
    car_park_id: str,
    label: str,
    crm: bool = False,
) -> tuple[CredentialRow, str]:
    """A new credential and its secret, which is returned this once and stored hashed."""
    tenant_id, car_park_id = principal_for(tenant_id, car_park_id, label, crm=crm)
    if await repository.get_mall(conn, mall_id) is None:
        raise NotFound("unknown_mall", f"no mall {mall_id}")
    if car_park_id and not await repository.car_park_exists(conn, mall_id, car_park_id):
        raise NotFound("unknown_car_park", f"mall {mall_id} has no car park {car_park_id}")
    if tenant_id and not await repository.tenant_exists(conn, mall_id, tenant_id):
        raise NotFound("unknown_tenant", f"mall {mall_id} has no tenant {tenant_id}")
    secret = new_secret()
    row = await sql.insert_credential(
        conn,
        mall_id=mall_id,
        credential_id=new_credential_id(),
        tenant_id=tenant_id or None,
        car_park_id=car_park_id or None,
        scope="crm" if crm else None,
        label=label,
        secret_hash=await asyncio.to_thread(hash_secret, secret),
    )
    await add_events(conn, [sql.credential_upserted(row)])
    return row, secret


async def revoke_credential(conn: Connection, mall_id: str, credential_id: str) -> CredentialRow:
    """Idempotent; the credential stops working everywhere within the verifiers' cache time."""
    revoked = await sql.revoke_credential(conn, mall_id, credential_id)
    if revoked is None:
        raise NotFound("unknown_credential", f"mall {mall_id} has no credential {credential_id}")
    row, changed = revoked
    if changed:
        await add_events(conn, [sql.credential_upserted(row)])
    return row


async def verify_credential(conn: Connection, presented: str) -> Principal:
    """The principal behind ``<credential_id>.<secret>``; one refusal for every failure."""
    credential_id, secret = parse_presented(presented)
    row = await sql.find_credential(conn, credential_id)
    if (
        row is None
        or row.revoked_at is not None
        or not await asyncio.to_thread(verify_secret, secret, row.secret_hash)
    ):
        raise Unauthenticated("invalid_credential", "unknown, revoked or wrong credential")
    return Principal(
        row.mall_id, row.credential_id, row.tenant_id or "", row.car_park_id or "", row.scope or ""
    )


async def authorize_store(conn: Connection, caller: Principal, mall_id: str, store_id: str) -> None:
    """Refuse unless the store is one of the calling tenant's, in its own mall."""
    tenant = await checkout_sql.store_tenant(conn, caller.mall_id, store_id)
    check_tenant_store(caller, mall_id, store_id, tenant)
