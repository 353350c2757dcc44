"""SQL for the member service's own tables. Every query is scoped by mall_id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from kit.db import Connection

from member.domain.model import (
    Attribution,
    CapturedRefund,
    JoinChannel,
    Member,
    PaymentSource,
    RecordedPayment,
    Store,
)


@dataclass(frozen=True)
class MallRow:
    mall_id: str
    name: str
    appid: str
    brand_id: str
    mchid: str
    time_zone: str
    created_at: datetime | None = None


async def malls_for_appids(conn: Connection, appids: Sequence[str]) -> dict[str, str]:
    """appid → mall_id for the appids that belong to a mall."""
    rows = await conn.fetch(
        "SELECT appid, mall_id FROM malls WHERE appid = ANY($1::text[])", list(set(appids))
    )
    return {r["appid"]: r["mall_id"] for r in rows}


async def find_stores(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Store]:
    """(mall_id, shop_number) → Store, for the shops the directory knows."""
    rows = await conn.fetch(
        """SELECT s.mall_id, s.shop_number, s.store_id, s.tenant_id,
                  coalesce(tn.category, '') AS category
             FROM unnest($1::text[], $2::text[]) AS t(m, n)
             JOIN stores s ON s.mall_id = t.m AND s.shop_number = t.n
             LEFT JOIN tenants tn ON tn.mall_id = s.mall_id AND tn.tenant_id = s.tenant_id""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {
        (r["mall_id"], r["shop_number"]): Store(
            r["mall_id"], r["store_id"], r["tenant_id"], r["category"]
        )
        for r in rows
    }


async def join_by_identities(
    conn: Connection, kind: str, keys: Sequence[tuple[str, str]], channel: JoinChannel
) -> dict[tuple[str, str], Member]:
    """(mall_id, identity value) → the member behind it, joining those with none.

    Claiming the identity row is the contested step: concurrent joins of the same shopper
    (two payments, or a payment and the mini-program) race on its primary key, and the loser
    reads the winner's member instead of creating a second one. Claims are made in key order
    so that two batches cannot deadlock.
    """
    ordered = sorted(set(keys))
    claimed = await conn.fetch(
        """INSERT INTO identities (mall_id, kind, value, member_id)
           SELECT m, $1, v, gen_random_uuid()
             FROM unnest($2::text[], $3::text[]) AS t(m, v) ORDER BY m, v
           ON CONFLICT (mall_id, kind, value) DO NOTHING
           RETURNING mall_id, value, member_id""",
        kind,
        [k[0] for k in ordered],
        [k[1] for k in ordered],
    )
    found = {
        (r["mall_id"], r["value"]): Member(r["mall_id"], str(r["member_id"]), "basic", True)
        for r in claimed
    }
    if claimed:
        await conn.execute(
            """INSERT INTO members (mall_id, member_id, join_channel)
               SELECT m, u, $3 FROM unnest($1::text[], $2::uuid[]) AS t(m, u)""",
            [r["mall_id"] for r in claimed],
            [r["member_id"] for r in claimed],
            channel.value,
        )
    rest = [k for k in ordered if k not in found]
    if rest:
        rows = await conn.fetch(
            # One primary-key probe per identity and member, whatever the planner believes of a
            # fresh table: a plain join was planned as a scan of the mall's identities joined
            # member by member when statistics were missing (198,726 buffers for a batch of 200
            # in a mall of 2,000, against 1,200 here). LIMIT 1 keeps the LATERALs from being
            # flattened back into that join.
            """SELECT i.mall_id, i.value, m.member_id, m.tier_code
                 FROM unnest($2::text[], $3::text[]) AS t(mall, v)
                 CROSS JOIN LATERAL (
                       SELECT mall_id, value, member_id FROM identities
                        WHERE mall_id = t.mall AND kind = $1 AND value = t.v LIMIT 1) i
                 CROSS JOIN LATERAL (
                       SELECT member_id, tier_code FROM members
                        WHERE mall_id = i.mall_id AND member_id = i.member_id LIMIT 1) m""",
            kind,
            [k[0] for k in rest],
            [k[1] for k in rest],
        )
        for r in rows:
            found[(r["mall_id"], r["value"])] = Member(
                r["mall_id"], str(r["member_id"]), r["tier_code"]
            )
    return found


async def record_payments(
    conn: Connection, attributions: Sequence[Attribution]
) -> set[tuple[str, str]]:
    """Keep the mall's record of payments; return the (mall_id, transaction_id) new here."""
    rows = await conn.fetch(
        """INSERT INTO payments (mall_id, transaction_id, member_id, tenant_id, store_id,
                                 amount_fen, source, paid_at)
           SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                                $6::bigint[], $7::text[], $8::timestamptz[])
           ON CONFLICT (mall_id, transaction_id) DO NOTHING
           RETURNING mall_id, transaction_id""",
        [a.store.mall_id for a in attributions],
        [a.payment.transaction_id for a in attributions],
        [uuid.UUID(a.member.member_id) for a in attributions],
        [a.store.tenant_id for a in attributions],
        [a.store.store_id for a in attributions],
        [a.payment.amount_fen for a in attributions],
        [a.source.value for a in attributions],
        [a.payment.paid_at for a in attributions],
    )
    return {(r["mall_id"], r["transaction_id"]) for r in rows}


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


async def upsert_car_park(
    conn: Connection, mall_id: str, car_park_id: str, name: str
) -> tuple[datetime, datetime]:
    """Created or renamed; its (created_at, updated_at)."""
    row = await conn.fetchrow(
        """INSERT INTO car_parks (mall_id, car_park_id, name) VALUES ($1, $2, $3)
           ON CONFLICT (mall_id, car_park_id) DO UPDATE SET name = $3, updated_at = now()
           RETURNING created_at, updated_at""",
        mall_id,
        car_park_id,
        name,
    )
    assert row is not None  # an upsert always returns its row
    return row["created_at"], row["updated_at"]


async def car_park_exists(conn: Connection, mall_id: str, car_park_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM car_parks WHERE mall_id = $1 AND car_park_id = $2",
            mall_id,
            car_park_id,
        )
    )


async def lock_transactions(conn: Connection, keys: Sequence[tuple[str, str]]) -> None:
    """Transaction-scoped locks on (mall, transaction id), taken in one order: a payment and
    its refund handled at the same moment see each other (one waits for the other's commit)
    instead of each missing the other and leaving the refund parked for good."""
    if not keys:
        return
    await conn.execute(
        """SELECT pg_advisory_xact_lock(k)
             FROM (SELECT DISTINCT hashtextextended(m || ':' || t, 7) AS k
                     FROM unnest($1::text[], $2::text[]) AS u(m, t)) keys
            ORDER BY k""",
        [m for m, _ in keys],
        [t for _, t in keys],
    )


async def tenant_exists(conn: Connection, mall_id: str, tenant_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM tenants WHERE mall_id = $1 AND tenant_id = $2", mall_id, tenant_id
        )
    )


async def tenant_category(conn: Connection, mall_id: str, tenant_id: str) -> str:
    """The tenant's category; "" for a tenant without one (or unknown)."""
    value = await conn.fetchval(
        "SELECT category FROM tenants WHERE mall_id = $1 AND tenant_id = $2", mall_id, tenant_id
    )
    return str(value or "")


async def recorded_payment(
    conn: Connection, mall_id: str, transaction_id: str
) -> RecordedPayment | None:
    """The payment with what its attributed refunds took back so far; locked for this tx
    so two refunds of one payment are checked one after the other."""
    row = await conn.fetchrow(
        """SELECT p.member_id, p.tenant_id, p.store_id, p.amount_fen, p.source,
                  (SELECT coalesce(sum(r.refund_amount_fen), 0) FROM refunds r
                    WHERE r.mall_id = p.mall_id AND r.transaction_id = p.transaction_id
                      AND r.state = 'attributed') AS refunded
             FROM payments p WHERE p.mall_id = $1 AND p.transaction_id = $2
              FOR UPDATE OF p""",
        mall_id,
        transaction_id,
    )
    if row is None:
        return None
    return RecordedPayment(
        mall_id,
        transaction_id,
        str(row["member_id"]),
        row["tenant_id"],
        row["store_id"],
        row["amount_fen"],
        PaymentSource(row["source"]),
        row["refunded"],
    )


async def insert_refund(conn: Connection, mall_id: str, refund: CapturedRefund, state: str) -> bool:
    """Record a refund; False if this refund id was recorded already."""
    inserted = await conn.fetchval(
        """INSERT INTO refunds (mall_id, refund_id, transaction_id, refund_amount_fen,
                                refunded_at, appid, openid, state)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (mall_id, refund_id) DO NOTHING RETURNING true""",
        mall_id,
        refund.refund_id,
        refund.transaction_id,
        refund.refund_amount_fen,
        refund.refunded_at,
        refund.appid,
        refund.openid,
        state,
    )
    return bool(inserted)


async def parked_refunds(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> list[tuple[str, CapturedRefund]]:
    """Parked refunds of these (mall_id, transaction_id), locked, oldest first."""
    rows = await conn.fetch(
        """SELECT r.mall_id, r.refund_id, r.transaction_id, r.refund_amount_fen,
                  r.refunded_at, r.appid, r.openid
             FROM unnest($1::text[], $2::text[]) AS t(m, x)
             JOIN refunds r ON r.mall_id = t.m AND r.transaction_id = t.x
            WHERE r.state = 'parked'
            ORDER BY r.recorded_at, r.refund_id
              FOR UPDATE OF r""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return [
        (
            r["mall_id"],
            CapturedRefund(
                event_id="",
                refund_id=r["refund_id"],
                transaction_id=r["transaction_id"],
                appid=r["appid"],
                openid=r["openid"],
                refund_amount_fen=r["refund_amount_fen"],
                refunded_at=r["refunded_at"],
            ),
        )
        for r in rows
    ]


async def mark_refund_attributed(conn: Connection, mall_id: str, refund_id: str) -> None:
    await conn.execute(
        "UPDATE refunds SET state = 'attributed' WHERE mall_id = $1 AND refund_id = $2",
        mall_id,
        refund_id,
    )
