"""Ops changes to the directory: malls, tenants, stores."""

from __future__ import annotations

import dataclasses
import re
import zoneinfo

from eventbus.outbox import add_events
from kit.db import Connection
from kit.errors import Conflict, InvalidInput, NotFound
from kit.proto import timestamp
from mall.member.v1 import directory_pb2

from member.adapters import events, repository
from member.adapters.repository import MallRow

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")


def _slug(field: str, value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise InvalidInput(
            f"invalid_{field}", f"{field} must be 2-40 of a-z, 0-9 and '-', got {value!r}"
        )
    return value


async def create_mall(
    conn: Connection,
    *,
    mall_id: str,
    name: str,
    appid: str,
    brand_id: str,
    mchid: str,
    time_zone: str,
) -> MallRow:
    _slug("mall_id", mall_id)
    if not name or not appid:
        raise InvalidInput("missing_field", "name and appid are required")
    time_zone = time_zone or "Asia/Shanghai"
    if time_zone not in zoneinfo.available_timezones():
        raise InvalidInput("invalid_time_zone", f"unknown time zone {time_zone!r}")
    row = MallRow(mall_id, name, appid, brand_id, mchid, time_zone)
    if not await repository.insert_mall(conn, row):
        existing = await repository.get_mall(conn, mall_id)
        if existing and existing == dataclasses.replace(row, created_at=existing.created_at):
            return existing  # the same request again: idempotent
        raise Conflict("mall_exists", f"mall {mall_id} or appid {appid} already exists")
    created = await repository.get_mall(conn, mall_id)
    assert created is not None
    await add_events(conn, [events.mall_upserted(created)])
    return created


async def create_tenant(
    conn: Connection, *, mall_id: str, tenant_id: str, name: str, category: str
) -> None:
    _slug("tenant_id", tenant_id)
    if await repository.get_mall(conn, mall_id) is None:
        raise NotFound("unknown_mall", f"no mall {mall_id}")
    if not name:
        raise InvalidInput("missing_field", "name is required")
    await repository.upsert_tenant(conn, mall_id, tenant_id, name, category)
    await add_events(
        conn,
        [
            events.tenant_upserted(
                mall_id=mall_id, tenant_id=tenant_id, name=name, category=category
            )
        ],
    )


async def create_car_park(
    conn: Connection, *, mall_id: str, car_park_id: str, name: str
) -> directory_pb2.CarPark:
    """Created, or renamed when it exists; announced so parking learns it."""
    _slug("car_park_id", car_park_id)
    if not name:
        raise InvalidInput("missing_field", "name is required")
    if await repository.get_mall(conn, mall_id) is None:
        raise NotFound("unknown_mall", f"no mall {mall_id}")
    created_at, updated_at = await repository.upsert_car_park(conn, mall_id, car_park_id, name)
    car_park = directory_pb2.CarPark(
        mall_id=mall_id,
        car_park_id=car_park_id,
        name=name,
        created_at=timestamp(created_at),
        updated_at=timestamp(updated_at),
    )
    await add_events(conn, [events.car_park_upserted(car_park)])
    return car_park


async def create_store(
    conn: Connection,
    *,
    mall_id: str,
    tenant_id: str,
    store_id: str,
    name: str,
    mchid: str,
    sub_mchid: str,
    shop_number: str,
) -> None:
    _slug("store_id", store_id)
    if not shop_number or not name:
        raise InvalidInput("missing_field", "name and shop_number are required")
    if not await repository.tenant_exists(conn, mall_id, tenant_id):
        raise NotFound("unknown_tenant", f"mall {mall_id} has no tenant {tenant_id}")
    stored = await repository.upsert_store(
        conn,
        mall_id=mall_id,
        store_id=store_id,
        tenant_id=tenant_id,
        name=name,
        mchid=mchid,
        sub_mchid=sub_mchid,
        shop_number=shop_number,
    )
    if not stored:
        raise Conflict("shop_number_taken", f"shop {shop_number} belongs to another store")
    await add_events(
        conn,
        [
            events.store_upserted(
                mall_id=mall_id,
                tenant_id=tenant_id,
                store_id=store_id,
                name=name,
                mchid=mchid,
                sub_mchid=sub_mchid,
                shop_number=shop_number,
            )
        ],
    )
