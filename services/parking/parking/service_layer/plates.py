"""Binding plates to members: one member per plate per mall, a limit per member, audited."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from kit.db import Connection
from kit.errors import Conflict, InvalidInput

from parking.adapters import plates, tariffs
from parking.adapters.plates import PlateRow


async def bind_plate(conn: Connection, wanted: PlateRow) -> PlateRow:
    """Bind (or update the preferences of) a plate. Refused, and recorded, when another member
    of the mall holds it; refused over the mall's plate limit."""
    holder = await _bind(conn, wanted)
    if isinstance(holder, PlateRow):
        return holder
    async with conn.transaction():  # the refusal is kept, apart from the refused change
        await plates.audit(
            conn, wanted.mall_id, wanted.plate_number, wanted.member_id, "refused", holder
        )
    raise Conflict("plate_bound_elsewhere", "another member of this mall holds this plate")


async def _bind(conn: Connection, wanted: PlateRow) -> PlateRow | str:
    """The bound plate, or the member id of whoever holds it already."""
    async with conn.transaction():
        await plates.lock_member(conn, wanted.mall_id, wanted.member_id)
        held = await plates.find(conn, wanted.mall_id, wanted.plate_number, lock=True)
        if held is not None and held.member_id != wanted.member_id:
            return held.member_id
        if held is not None:
            if (held.plate_color, held.pay_with_points, held.appid, held.openid) == (
                wanted.plate_color,
                wanted.pay_with_points,
                wanted.appid,
                wanted.openid,
            ):
                return held
            updated = await plates.update(conn, wanted)
            await plates.audit(
                conn, wanted.mall_id, wanted.plate_number, wanted.member_id, "updated"
            )
            return updated
        policy, _ = await tariffs.get_policy(conn, wanted.mall_id)
        owned = await plates.for_member(conn, wanted.mall_id, wanted.member_id)
        if len(owned) >= policy.max_plates_per_member:
            raise Conflict(
                "too_many_plates",
                f"a member binds at most {policy.max_plates_per_member} plates in this mall",
            )
        created = await plates.insert(conn, wanted)
        if created is None:  # bound by another member a moment ago
            raced = await plates.find(conn, wanted.mall_id, wanted.plate_number)
            return raced.member_id if raced else ""
        await plates.audit(conn, wanted.mall_id, wanted.plate_number, wanted.member_id, "bound")
        return created


async def unbind_plate(conn: Connection, mall_id: str, member_id: str, plate_number: str) -> None:
    async with conn.transaction():
        if await plates.delete(conn, mall_id, plate_number, member_id):
            await plates.audit(conn, mall_id, plate_number, member_id, "unbound")


def new_plate(
    mall_id: str,
    member_id: str,
    plate_number: str,
    color: str,
    *,
    pay_with_points: bool,
    appid: str,
    openid: str,
    now: datetime,
) -> PlateRow:
    if openid and not appid:
        raise InvalidInput("missing_field", "appid is required with openid")
    return replace(
        PlateRow(mall_id, plate_number, member_id, color, False, "", "", now),
        pay_with_points=pay_with_points,
        appid=appid,
        openid=openid,
    )
