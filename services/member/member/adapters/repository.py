"""SQL for the member service's own tables. Every query is scoped by mall_id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from kit.db import Connection

from member.domain.model import Attribution, JoinChannel, Member, Store


@dataclass(frozen=True)
class MallRow:
    mall_id: str
    name: str
    appid: str
    brand_id: str
    mchid: str
    time_zone: str
    created_at: datetime | None = None


async def mall_id_for_appid(conn: Connection, appid: str) -> str | None:
    value: str | None = await conn.fetchval("SELECT mall_id FROM malls WHERE appid = $1", appid)
    return value


async def find_store(conn: Connection, mall_id: str, shop_number: str) -> Store | None:
    row = await conn.fetchrow(
        "SELECT store_id, tenant_id FROM stores WHERE mall_id = $1 AND shop_number = $2",
        mall_id,
        shop_number,
    )
    return Store(mall_id, row["store_id"], row["tenant_id"]) if row else None


async def join_by_identity(
    conn: Connection, mall_id: str, kind: str, value: str, channel: JoinChannel
) -> Member:
    """The member behind an identity, joining one if there is none.

    Claiming the identity row is the contested step: concurrent joins of the same shopper
    (two payments, or a payment and the mini-program) race on its primary key, and the loser
    reads the winner's member instead of creating a second one.
    """
    member_id = uuid.uuid4()
    claimed = await conn.fetchval(
        """INSERT INTO identities (mall_id, kind, value, member_id) VALUES ($1, $2, $3, $4)
           ON CONFLICT (mall_id, kind, value) DO NOTHING RETURNING member_id""",
        mall_id,
        kind,
        value,
        member_id,
    )
    if claimed is not None:
        await conn.execute(
            "INSERT INTO members (mall_id, member_id, join_channel) VALUES ($1, $2, $3)",
            mall_id,
            member_id,
            channel.value,
        )
        return Member(mall_id, str(member_id), "basic", joined_now=True)
    row = await conn.fetchrow(
        """SELECT m.member_id, m.tier_code FROM identities i
             JOIN members m USING (mall_id, member_id)
            WHERE i.mall_id = $1 AND i.kind = $2 AND i.value = $3""",
        mall_id,
        kind,
        value,
    )
    assert row is not None, "identity claimed by a transaction that is not visible yet"
    return Member(mall_id, str(row["member_id"]), row["tier_code"])


async def record_payment(conn: Connection, attribution: Attribution) -> bool:
    """Keep the mall's record of a payment; False if it was recorded already."""
    p = attribution.payment
    inserted = await conn.fetchval(
        """INSERT INTO payments (mall_id, transaction_id, member_id, tenant_id, store_id,
                                 amount_fen, source, paid_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (mall_id, transaction_id) DO NOTHING RETURNING true""",
        attribution.store.mall_id,
        p.transaction_id,
        uuid.UUID(attribution.member.member_id),
        attribution.store.tenant_id,
        attribution.store.store_id,
        p.amount_fen,
        attribution.source.value,
        p.paid_at,
    )
    return bool(inserted)


async def get_member(conn: Connection, mall_id: str, member_id: str) -> Member | None:
    try:
        key = uuid.UUID(member_id)
    except ValueError:
        return None
    row = await conn.fetchrow(
        "SELECT tier_code FROM members WHERE mall_id = $1 AND member_id = $2", mall_id, key
    )
    return Member(mall_id, member_id, row["tier_code"]) if row else None


async def member_by_identity(
    conn: Connection, mall_id: str, kind: str, value: str
) -> Member | None:
    row = await conn.fetchrow(
        """SELECT m.member_id, m.tier_code FROM identities i
             JOIN members m USING (mall_id, member_id)
            WHERE i.mall_id = $1 AND i.kind = $2 AND i.value = $3""",
        mall_id,
        kind,
        value,
    )
    return Member(mall_id, str(row["member_id"]), row["tier_code"]) if row else None


# -- directory --------------------------------------------------------------------------


async def insert_mall(conn: Connection, mall: MallRow) -> bool:
    try:
        async with conn.transaction():  # a savepoint when the caller has a transaction open
            await conn.execute(
                """INSERT INTO malls (mall_id, name, appid, brand_id, mchid, time_zone)
               VALUES ($1, $2, $3, $4, $5, $6)""",
                mall.mall_id,
                mall.name,
                mall.appid,
                mall.brand_id,
                mall.mchid,
                mall.time_zone,
            )
    except asyncpg.UniqueViolationError:
        return False
    return True


async def get_mall(conn: Connection, mall_id: str) -> MallRow | None:
    row = await conn.fetchrow("SELECT * FROM malls WHERE mall_id = $1", mall_id)
    return MallRow(**dict(row)) if row else None


async def list_malls(conn: Connection) -> list[MallRow]:
    return [MallRow(**dict(r)) for r in await conn.fetch("SELECT * FROM malls ORDER BY mall_id")]


async def upsert_tenant(
    conn: Connection, mall_id: str, tenant_id: str, name: str, category: str
) -> None:
    await conn.execute(
        """INSERT INTO tenants (mall_id, tenant_id, name, category) VALUES ($1, $2, $3, $4)
           ON CONFLICT (mall_id, tenant_id) DO UPDATE SET name = $3, category = $4""",
        mall_id,
        tenant_id,
        name,
        category,
    )


async def upsert_store(
    conn: Connection,
    *,
    mall_id: str,
    store_id: str,
    tenant_id: str,
    name: str,
    mchid: str,
    sub_mchid: str,
    shop_number: str,
) -> bool:
    """Create or update a store; False if its shop number belongs to another store."""
    try:
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO stores
                       (mall_id, store_id, tenant_id, name, mchid, sub_mchid, shop_number)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (mall_id, store_id) DO UPDATE
              SET tenant_id = $3, name = $4, mchid = $5, sub_mchid = $6, shop_number = $7""",
                mall_id,
                store_id,
                tenant_id,
                name,
                mchid,
                sub_mchid,
                shop_number,
            )
    except asyncpg.UniqueViolationError:
        return False
    return True


async def tenant_exists(conn: Connection, mall_id: str, tenant_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM tenants WHERE mall_id = $1 AND tenant_id = $2", mall_id, tenant_id
        )
    )
