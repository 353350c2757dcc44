"""The slice of member's directory the commitment RPCs check callers against (fed by
``member.directory.credential_upserted`` / ``store_upserted``; only hashes of secrets)."""

from __future__ import annotations

from collections.abc import Sequence

from kit.db import Connection

# -- directory slice ------------------------------------------------------------------------


async def put_credential(
    conn: Connection,
    credential_id: str,
    mall_id: str,
    tenant_id: str,
    secret_hash: str,
    revoked: bool,
) -> None:
    await conn.execute(
        """INSERT INTO commitment_credentials
               (credential_id, mall_id, tenant_id, secret_hash, revoked)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (credential_id) DO UPDATE
              SET mall_id = EXCLUDED.mall_id, tenant_id = EXCLUDED.tenant_id,
                  secret_hash = EXCLUDED.secret_hash, revoked = EXCLUDED.revoked""",
        credential_id,
        mall_id,
        tenant_id,
        secret_hash,
        revoked,
    )


async def get_credential(conn: Connection, credential_id: str) -> tuple[str, str, str] | None:
    """``(mall_id, tenant_id, secret_hash)`` of a valid credential, None if unknown/revoked."""
    row = await conn.fetchrow(
        """SELECT mall_id, tenant_id, secret_hash FROM commitment_credentials
            WHERE credential_id = $1 AND NOT revoked""",
        credential_id,
    )
    return None if row is None else (row["mall_id"], row["tenant_id"], row["secret_hash"])


async def put_store(conn: Connection, mall_id: str, store_id: str, tenant_id: str) -> None:
    await conn.execute(
        """INSERT INTO commitment_stores (mall_id, store_id, tenant_id) VALUES ($1, $2, $3)
           ON CONFLICT (mall_id, store_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id""",
        mall_id,
        store_id,
        tenant_id,
    )


async def store_tenants(conn: Connection, mall_id: str, store_ids: Sequence[str]) -> dict[str, str]:
    rows = await conn.fetch(
        """SELECT store_id, tenant_id FROM commitment_stores
            WHERE mall_id = $1 AND store_id = ANY($2::text[])""",
        mall_id,
        list(store_ids),
    )
    return {r["store_id"]: r["tenant_id"] for r in rows}
