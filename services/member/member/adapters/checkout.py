"""SQL for checkout codes and for what a tenant may see of a member."""

from __future__ import annotations

import uuid
from datetime import datetime

from kit.db import Connection


async def insert_code(
    conn: Connection, mall_id: str, code_hash: bytes, member_id: str, ttl_s: float
) -> datetime:
    """Store a new code valid for ttl_s by the database's clock (the one that checks it);
    its expiry. Codes of this member that expired an hour ago are swept on the way."""
    key = uuid.UUID(member_id)
    await conn.execute(
        """DELETE FROM checkout_codes
            WHERE mall_id = $1 AND member_id = $2 AND expires_at < now() - interval '1 hour'""",
        mall_id,
        key,
    )
    expires_at: datetime = await conn.fetchval(
        """INSERT INTO checkout_codes (mall_id, code_hash, member_id, expires_at)
           VALUES ($1, $2, $3, now() + make_interval(secs => $4))
        RETURNING expires_at""",
        mall_id,
        code_hash,
        key,
        ttl_s,
    )
    return expires_at


async def consume_code(
    conn: Connection, mall_id: str, code_hash: bytes, store_id: str
) -> str | None:
    """Mark a valid code used, atomically; the member id, or None if it was not valid."""
    member_id = await conn.fetchval(
        """UPDATE checkout_codes SET used_at = now(), used_store_id = $3
            WHERE mall_id = $1 AND code_hash = $2 AND used_at IS NULL AND expires_at > now()
        RETURNING member_id""",
        mall_id,
        code_hash,
        store_id,
    )
    return str(member_id) if member_id else None


async def code_state(conn: Connection, mall_id: str, code_hash: bytes) -> str:
    """Why a code was not valid: ``used``, ``expired`` or ``unknown``."""
    row = await conn.fetchrow(
        """SELECT used_at IS NOT NULL AS used FROM checkout_codes
            WHERE mall_id = $1 AND code_hash = $2""",
        mall_id,
        code_hash,
    )
    if row is None:
        return "unknown"
    return "used" if row["used"] else "expired"


async def store_tenant(conn: Connection, mall_id: str, store_id: str) -> str | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT tenant_id FROM stores WHERE mall_id = $1 AND store_id = $2", mall_id, store_id
    )


async def paid_at_tenant(conn: Connection, mall_id: str, member_id: str, tenant_id: str) -> bool:
    return bool(
        await conn.fetchval(
            """SELECT true FROM payments
                WHERE mall_id = $1 AND member_id = $2 AND tenant_id = $3 LIMIT 1""",
            mall_id,
            uuid.UUID(member_id),
            tenant_id,
        )
    )
