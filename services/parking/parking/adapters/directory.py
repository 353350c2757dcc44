"""SQL for parking's copy of the directory: malls (time zone, WeChat ids), car parks."""

from __future__ import annotations

from dataclasses import dataclass

from kit.db import Connection

DEFAULT_TIME_ZONE = "Asia/Shanghai"


@dataclass(frozen=True)
class MallRow:
    mall_id: str
    time_zone: str
    appid: str
    brand_id: str
    mchid: str


async def upsert_mall(
    conn: Connection, mall_id: str, time_zone: str, appid: str, brand_id: str, mchid: str
) -> None:
    await conn.execute(
        """INSERT INTO malls (mall_id, time_zone, appid, brand_id, mchid)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (mall_id) DO UPDATE SET time_zone = $2, appid = $3, brand_id = $4,
                mchid = $5, updated_at = now()""",
        mall_id,
        time_zone or DEFAULT_TIME_ZONE,
        appid,
        brand_id,
        mchid,
    )


async def get_mall(conn: Connection, mall_id: str) -> MallRow:
    """The mall as parking knows it; defaults when no directory event has arrived yet."""
    row = await conn.fetchrow(
        "SELECT mall_id, time_zone, appid, brand_id, mchid FROM malls WHERE mall_id = $1",
        mall_id,
    )
    if row is None:
        return MallRow(mall_id, DEFAULT_TIME_ZONE, "", "", "")
    return MallRow(**dict(row))


async def upsert_car_park(conn: Connection, mall_id: str, car_park_id: str, name: str) -> None:
    await conn.execute(
        """INSERT INTO car_parks (mall_id, car_park_id, name) VALUES ($1, $2, $3)
           ON CONFLICT (mall_id, car_park_id) DO UPDATE SET name = $3, updated_at = now()""",
        mall_id,
        car_park_id,
        name,
    )


async def car_park_name(conn: Connection, mall_id: str, car_park_id: str) -> str:
    name = await conn.fetchval(
        "SELECT name FROM car_parks WHERE mall_id = $1 AND car_park_id = $2", mall_id, car_park_id
    )
    return str(name or car_park_id)
