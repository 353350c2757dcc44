"""SQL for credentials, and the CredentialUpserted event that announces them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from eventbus.outbox import OutgoingEvent, event
from kit.db import Connection
from kit.proto import timestamp
from mall.member.v1 import directory_pb2, events_pb2

CREDENTIAL_UPSERTED = "member.directory.credential_upserted"


@dataclass(frozen=True)
class CredentialRow:
    mall_id: str
    credential_id: str
    tenant_id: str | None
    car_park_id: str | None
    label: str
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None
    scope: str | None = None


_COLUMNS = (
    "mall_id, credential_id, tenant_id, car_park_id, label, secret_hash, created_at, revoked_at,"
    " scope"
)


async def insert_credential(
    conn: Connection,
    *,
    mall_id: str,
    credential_id: str,
    tenant_id: str | None,
    car_park_id: str | None,
    label: str,
    secret_hash: str,
    scope: str | None = None,
) -> CredentialRow:
    row = await conn.fetchrow(
        f"""INSERT INTO credentials
                (mall_id, credential_id, tenant_id, car_park_id, label, secret_hash, scope)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}""",
        mall_id,
        credential_id,
        tenant_id,
        car_park_id,
        label,
        secret_hash,
        scope,
    )
    assert row is not None
    return CredentialRow(**dict(row))


async def revoke_credential(
    conn: Connection, mall_id: str, credential_id: str
) -> tuple[CredentialRow, bool] | None:
    """The credential after revocation and whether this call revoked it; None if unknown."""
    # Two statements: a CTE cannot tell "before" from "after" for a row its own UPDATE changed.
    row = await conn.fetchrow(
        f"""UPDATE credentials SET revoked_at = now()
             WHERE mall_id = $1 AND credential_id = $2 AND revoked_at IS NULL
            RETURNING {_COLUMNS}""",
        mall_id,
        credential_id,
    )
    if row is not None:
        return CredentialRow(**dict(row)), True
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM credentials WHERE mall_id = $1 AND credential_id = $2",
        mall_id,
        credential_id,
    )
    return (CredentialRow(**dict(row)), False) if row is not None else None


async def find_credential(conn: Connection, credential_id: str) -> CredentialRow | None:
    """By id alone: the one lookup not scoped by mall, since the caller's mall is what the
    credential tells us (like an appid telling the mall of a payment)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM credentials WHERE credential_id = $1", credential_id
    )
    return CredentialRow(**dict(row)) if row else None


def credential_message(row: CredentialRow, *, with_hash: bool) -> directory_pb2.Credential:
    msg = directory_pb2.Credential(
        mall_id=row.mall_id,
        credential_id=row.credential_id,
        label=row.label,
        secret_hash=row.secret_hash if with_hash else "",
        created_at=timestamp(row.created_at),
    )
    if row.tenant_id:
        msg.tenant_id = row.tenant_id
    if row.car_park_id:
        msg.car_park_id = row.car_park_id
    if row.scope == "crm":
        msg.crm = True
    if row.revoked_at:
        msg.revoked_at.CopyFrom(timestamp(row.revoked_at))
    return msg


def credential_upserted(row: CredentialRow) -> OutgoingEvent:
    """Carries the hash, as the contract says, so services can check callers locally."""
    msg = events_pb2.CredentialUpserted(
        credential=credential_message(row, with_hash=True),
    )
    return event(CREDENTIAL_UPSERTED, msg, mall_id=row.mall_id)
