"""SQL for plates bound to members, and their audit trail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kit.db import Connection


@dataclass(frozen=True)
class PlateRow:
    mall_id: str
    plate_number: str
    member_id: str
    plate_color: str
    pay_with_points: bool
    appid: str
    openid: str
    bound_at: datetime


_COLUMNS = "mall_id, plate_number, member_id, plate_color, pay_with_points, appid, openid, bound_at"


async def lock_member(conn: Connection, mall_id: str, member_id: str) -> None:
    """Serialise binds of one member, so the plate limit holds under concurrent calls."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))", f"plates:{mall_id}:{member_id}"
    )


async def find(
    conn: Connection, mall_id: str, plate_number: str, *, lock: bool = False
) -> PlateRow | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM plates WHERE mall_id = $1 AND plate_number = $2"
        + (" FOR UPDATE" if lock else ""),
        mall_id,
        plate_number,
    )
    return PlateRow(**dict(row)) if row else None


async def for_member(conn: Connection, mall_id: str, member_id: str) -> list[PlateRow]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM plates WHERE mall_id = $1 AND member_id = $2 ORDER BY bound_at",
        mall_id,
        member_id,
    )
    return [PlateRow(**dict(r)) for r in rows]


async def insert(conn: Connection, plate: PlateRow) -> PlateRow | None:
    """None when someone else bound the plate first."""
    row = await conn.fetchrow(
        f"""INSERT INTO plates ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (mall_id, plate_number) DO NOTHING RETURNING {_COLUMNS}""",
        plate.mall_id,
        plate.plate_number,
        plate.member_id,
        plate.plate_color,
        plate.pay_with_points,
        plate.appid,
        plate.openid,
        plate.bound_at,
    )
    return PlateRow(**dict(row)) if row else None


async def update(conn: Connection, plate: PlateRow) -> PlateRow:
    row = await conn.fetchrow(
        f"""UPDATE plates SET plate_color = $3, pay_with_points = $4, appid = $5, openid = $6
             WHERE mall_id = $1 AND plate_number = $2 RETURNING {_COLUMNS}""",
        plate.mall_id,
        plate.plate_number,
        plate.plate_color,
        plate.pay_with_points,
        plate.appid,
        plate.openid,
    )
    assert row is not None
    return PlateRow(**dict(row))


async def delete(conn: Connection, mall_id: str, plate_number: str, member_id: str) -> bool:
    result = await conn.execute(
        "DELETE FROM plates WHERE mall_id = $1 AND plate_number = $2 AND member_id = $3",
        mall_id,
        plate_number,
        member_id,
    )
    return bool(result.endswith(" 1"))


async def audit(
    conn: Connection,
    mall_id: str,
    plate_number: str,
    member_id: str,
    action: str,
    holder_member_id: str | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO plate_audit (mall_id, plate_number, member_id, action, holder_member_id)
           VALUES ($1, $2, $3, $4, $5)""",
        mall_id,
        plate_number,
        member_id,
        action,
        holder_member_id,
    )


async def history(conn: Connection, mall_id: str, plate_number: str) -> list[tuple[str, str]]:
    """(member_id, action) of every change to a plate, oldest first."""
    rows = await conn.fetch(
        """SELECT member_id, action FROM plate_audit
            WHERE mall_id = $1 AND plate_number = $2 ORDER BY id""",
        mall_id,
        plate_number,
    )
    return [(r["member_id"], r["action"]) for r in rows]
