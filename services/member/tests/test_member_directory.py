"""Service layer on real PostgreSQL: ops onboard malls, tenants and stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from kit.errors import Conflict, ErrorKind, InvalidInput, NotFound
from kit.migrations import migrate
from mall_testing.plugin import FreshDatabase
from member.adapters.repository import MallRow
from member.bootstrap import MIGRATIONS
from member.service_layer import directory


@pytest.fixture(scope="module")
async def member_db(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("member")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture
async def conn(member_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(member_db)
    try:
        yield connection
    finally:
        await connection.close()


def mall_fields(tag: str, **overrides: str) -> dict[str, str]:
    fields = {
        "mall_id": f"mall-{tag}",
        "name": f"Mall {tag}",
        "appid": f"wx{tag}",
        "brand_id": "brand",
        "mchid": "1900000109",
        "time_zone": "Asia/Shanghai",
    }
    return fields | overrides


async def create_mall(conn: asyncpg.Connection, **fields: str) -> MallRow:
    async with conn.transaction():
        return await directory.create_mall(conn, **fields)


async def create_store(conn: asyncpg.Connection, **fields: Any) -> None:
    async with conn.transaction():
        await directory.create_store(conn, **fields)


async def mall_with_tenant(conn: asyncpg.Connection, tag: str) -> tuple[str, str]:
    mall = await create_mall(conn, **mall_fields(tag))
    tenant_id = f"tenant-{tag}"
    async with conn.transaction():
        await directory.create_tenant(
            conn, mall_id=mall.mall_id, tenant_id=tenant_id, name="Coffee", category="food"
        )
    return mall.mall_id, tenant_id


def store_fields(mall_id: str, tenant_id: str, store_id: str, shop_number: str) -> dict[str, str]:
    return {
        "mall_id": mall_id,
        "tenant_id": tenant_id,
        "store_id": store_id,
        "name": "Coffee L1",
        "mchid": "1900000109",
        "sub_mchid": "1900000110",
        "shop_number": shop_number,
    }


async def malls_named(conn: asyncpg.Connection, *mall_ids: str) -> int:
    value: int = await conn.fetchval(
        "SELECT count(*) FROM malls WHERE mall_id = ANY($1::text[])", list(mall_ids)
    )
    return value


# -- malls ----------------------------------------------------------------------------------


async def test_a_mall_is_created_with_its_fields(conn: asyncpg.Connection, unique_id: str) -> None:
    fields = mall_fields(unique_id, time_zone="Asia/Urumqi")

    mall = await create_mall(conn, **fields)

    assert (mall.mall_id, mall.name, mall.appid) == (
        fields["mall_id"],
        fields["name"],
        fields["appid"],
    )
    assert (mall.brand_id, mall.mchid, mall.time_zone) == ("brand", "1900000109", "Asia/Urumqi")
    assert mall.created_at is not None
    assert await malls_named(conn, mall.mall_id) == 1


async def test_a_mall_without_a_time_zone_gets_shanghai(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall = await create_mall(conn, **mall_fields(unique_id, time_zone=""))

    assert mall.time_zone == "Asia/Shanghai"


@pytest.mark.parametrize(
    "mall_id",
    ["", "m", "Mall-Upper", "-leading-dash", "under_score", "space d", "a" * 41, "商圈"],
)
async def test_a_bad_mall_id_is_refused(
    conn: asyncpg.Connection, unique_id: str, mall_id: str
) -> None:
    fields = mall_fields(unique_id, mall_id=mall_id)

    with pytest.raises(InvalidInput) as caught:
        await create_mall(conn, **fields)

    assert caught.value.code == "invalid_mall_id"
    assert await conn.fetchval("SELECT count(*) FROM malls WHERE appid = $1", fields["appid"]) == 0


@pytest.mark.parametrize("time_zone", ["Mars/Olympus_Mons", "UTC+8", "asia/shanghai"])
async def test_an_unknown_time_zone_is_refused(
    conn: asyncpg.Connection, unique_id: str, time_zone: str
) -> None:
    fields = mall_fields(unique_id, time_zone=time_zone)

    with pytest.raises(InvalidInput) as caught:
        await create_mall(conn, **fields)

    assert caught.value.code == "invalid_time_zone"
    assert await malls_named(conn, fields["mall_id"]) == 0


@pytest.mark.parametrize("field", ["name", "appid"])
async def test_a_mall_needs_a_name_and_an_appid(
    conn: asyncpg.Connection, unique_id: str, field: str
) -> None:
    fields = mall_fields(unique_id, **{field: ""})

    with pytest.raises(InvalidInput) as caught:
        await create_mall(conn, **fields)

    assert caught.value.code == "missing_field"
    assert await malls_named(conn, fields["mall_id"]) == 0


async def test_creating_the_same_mall_again_is_idempotent(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    first = await create_mall(conn, **mall_fields(unique_id))

    again = await create_mall(conn, **mall_fields(unique_id))

    assert again == first
    assert await malls_named(conn, first.mall_id) == 1


async def test_another_mall_with_a_taken_appid_is_a_conflict(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    first = await create_mall(conn, **mall_fields(unique_id))
    other_id = f"other-{unique_id}"

    with pytest.raises(Conflict) as caught:
        await create_mall(conn, **mall_fields(unique_id, mall_id=other_id))

    assert caught.value.code == "mall_exists"
    assert caught.value.kind is ErrorKind.CONFLICT
    assert await malls_named(conn, first.mall_id, other_id) == 1


async def test_a_taken_mall_id_with_other_fields_is_a_conflict(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    first = await create_mall(conn, **mall_fields(unique_id))

    with pytest.raises(Conflict) as caught:
        await create_mall(conn, **mall_fields(unique_id, name="Another name", appid="wxother"))

    assert caught.value.code == "mall_exists"
    stored = await conn.fetchrow("SELECT name, appid FROM malls WHERE mall_id = $1", first.mall_id)
    assert stored is not None
    assert (stored["name"], stored["appid"]) == (first.name, first.appid)


@pytest.mark.parametrize(
    "change", [{"time_zone": "Asia/Tokyo"}, {"brand_id": "other-brand"}, {"mchid": "1900009999"}]
)
async def test_a_repeat_with_any_field_changed_is_a_conflict_not_a_silent_success(
    conn: asyncpg.Connection, unique_id: str, change: dict[str, str]
) -> None:
    first = await create_mall(conn, **mall_fields(unique_id))

    with pytest.raises(Conflict) as caught:
        await create_mall(conn, **mall_fields(unique_id, **change))

    assert caught.value.code == "mall_exists"
    assert await create_mall(conn, **mall_fields(unique_id)) == first


async def test_a_conflict_leaves_the_callers_transaction_usable(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    """The refused insert runs in a savepoint: the surrounding transaction carries on."""
    await create_mall(conn, **mall_fields(unique_id))

    async with conn.transaction():
        with pytest.raises(Conflict):
            await directory.create_mall(conn, **mall_fields(unique_id, mall_id=f"x-{unique_id}"))
        later = await directory.create_mall(conn, **mall_fields(f"{unique_id}-b"))

    assert await malls_named(conn, later.mall_id) == 1


# -- tenants and stores ---------------------------------------------------------------------


async def test_a_tenant_of_an_unknown_mall_is_refused(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    with pytest.raises(NotFound) as caught:
        await directory.create_tenant(
            conn, mall_id=f"mall-{unique_id}", tenant_id="coffee", name="Coffee", category="food"
        )

    assert caught.value.code == "unknown_mall"


async def test_a_store_is_created_and_can_be_created_again(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id, tenant_id = await mall_with_tenant(conn, unique_id)
    fields = store_fields(mall_id, tenant_id, "coffee-l1", "SHOP-001")

    await create_store(conn, **fields)
    await create_store(conn, **fields)

    rows = await conn.fetch(
        "SELECT store_id, tenant_id, shop_number, sub_mchid FROM stores WHERE mall_id = $1",
        mall_id,
    )
    assert [dict(r) for r in rows] == [
        {
            "store_id": "coffee-l1",
            "tenant_id": tenant_id,
            "shop_number": "SHOP-001",
            "sub_mchid": "1900000110",
        }
    ]


async def test_a_store_of_an_unknown_tenant_is_refused(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id, _ = await mall_with_tenant(conn, unique_id)

    with pytest.raises(NotFound) as caught:
        await create_store(conn, **store_fields(mall_id, "no-such-tenant", "s-1", "SHOP-001"))

    assert caught.value.code == "unknown_tenant"
    assert await conn.fetchval("SELECT count(*) FROM stores WHERE mall_id = $1", mall_id) == 0


async def test_a_tenant_of_another_mall_is_unknown_here(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id, _ = await mall_with_tenant(conn, unique_id)
    _, foreign_tenant = await mall_with_tenant(conn, f"{unique_id}-b")

    with pytest.raises(NotFound) as caught:
        await create_store(conn, **store_fields(mall_id, foreign_tenant, "s-1", "SHOP-001"))

    assert caught.value.code == "unknown_tenant"


async def test_a_shop_number_cannot_belong_to_two_stores(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id, tenant_id = await mall_with_tenant(conn, unique_id)
    await create_store(conn, **store_fields(mall_id, tenant_id, "coffee-l1", "SHOP-001"))

    with pytest.raises(Conflict) as caught:
        await create_store(conn, **store_fields(mall_id, tenant_id, "coffee-l2", "SHOP-001"))

    assert caught.value.code == "shop_number_taken"
    stores = await conn.fetch("SELECT store_id FROM stores WHERE mall_id = $1", mall_id)
    assert [r["store_id"] for r in stores] == ["coffee-l1"]


async def test_the_same_shop_number_may_be_used_in_another_mall(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    here, here_tenant = await mall_with_tenant(conn, unique_id)
    there, there_tenant = await mall_with_tenant(conn, f"{unique_id}-b")

    await create_store(conn, **store_fields(here, here_tenant, "coffee-l1", "SHOP-001"))
    await create_store(conn, **store_fields(there, there_tenant, "coffee-l1", "SHOP-001"))

    assert (
        await conn.fetchval(
            "SELECT count(*) FROM stores WHERE mall_id = ANY($1::text[])", [here, there]
        )
        == 2
    )


@pytest.mark.parametrize("field", ["name", "shop_number"])
async def test_a_store_needs_a_name_and_a_shop_number(
    conn: asyncpg.Connection, unique_id: str, field: str
) -> None:
    mall_id, tenant_id = await mall_with_tenant(conn, unique_id)
    fields = store_fields(mall_id, tenant_id, "coffee-l1", "SHOP-001") | {field: ""}

    with pytest.raises(InvalidInput) as caught:
        await create_store(conn, **fields)

    assert caught.value.code == "missing_field"
