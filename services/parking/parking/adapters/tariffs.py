"""SQL for the mall's parking policy and the car parks' fee schedule versions."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from datetime import datetime

from kit.db import Connection

from parking.domain.benefits import ParkingPolicy
from parking.domain.fees import FeeSchedule

_SCHEDULE_FIELDS = (
    "free_minutes",
    "unit_minutes",
    "unit_fee_fen",
    "daily_cap_fen",
    "night_start_minute",
    "night_end_minute",
    "night_unit_fee_fen",
    "missing_entry_fee_fen",
)
_PLACEHOLDERS = ", ".join(f"${i}" for i in range(5, 5 + len(_SCHEDULE_FIELDS)))


async def get_policy(conn: Connection, mall_id: str) -> tuple[ParkingPolicy, datetime | None]:
    row = await conn.fetchrow(
        "SELECT policy, version, updated_at FROM parking_policies WHERE mall_id = $1", mall_id
    )
    if row is None:
        return ParkingPolicy(), None
    return ParkingPolicy(**json.loads(row["policy"]), version=row["version"]), row["updated_at"]


async def put_policy(
    conn: Connection, mall_id: str, policy: ParkingPolicy
) -> tuple[ParkingPolicy, datetime]:
    fields = asdict(policy)
    fields.pop("version")
    row = await conn.fetchrow(
        """INSERT INTO parking_policies (mall_id, policy, version) VALUES ($1, $2::jsonb, 1)
           ON CONFLICT (mall_id) DO UPDATE
               SET policy = $2::jsonb, version = parking_policies.version + 1, updated_at = now()
           RETURNING version, updated_at""",
        mall_id,
        json.dumps(fields),
    )
    assert row is not None
    return replace(policy, version=row["version"]), row["updated_at"]


async def add_schedule(
    conn: Connection, mall_id: str, car_park_id: str, schedule: FeeSchedule, at: datetime
) -> tuple[FeeSchedule, datetime]:
    """Store a new version (serialised per car park by the advisory lock)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))", f"fee-schedule:{mall_id}:{car_park_id}"
    )
    version = await conn.fetchval(
        """SELECT coalesce(max(version), 0) + 1 FROM fee_schedules
            WHERE mall_id = $1 AND car_park_id = $2""",
        mall_id,
        car_park_id,
    )
    effective = schedule.effective_from or at
    created = await conn.fetchval(
        f"""INSERT INTO fee_schedules (mall_id, car_park_id, version, effective_from,
                {", ".join(_SCHEDULE_FIELDS)})
            VALUES ($1, $2, $3, $4, {_PLACEHOLDERS})
            RETURNING created_at""",
        mall_id,
        car_park_id,
        version,
        effective,
        *(getattr(schedule, f) for f in _SCHEDULE_FIELDS),
    )
    return replace(schedule, version=version, effective_from=effective), created


async def list_schedules(
    conn: Connection, mall_id: str, car_park_id: str
) -> list[tuple[FeeSchedule, datetime]]:
    """Every version, newest first."""
    rows = await conn.fetch(
        f"""SELECT version, effective_from, created_at, {", ".join(_SCHEDULE_FIELDS)}
              FROM fee_schedules WHERE mall_id = $1 AND car_park_id = $2
             ORDER BY version DESC""",
        mall_id,
        car_park_id,
    )
    return [
        (
            FeeSchedule(
                **{f: r[f] for f in _SCHEDULE_FIELDS},
                effective_from=r["effective_from"],
                version=r["version"],
            ),
            r["created_at"],
        )
        for r in rows
    ]


async def schedule_at(
    conn: Connection, mall_id: str, car_park_id: str, at: datetime
) -> FeeSchedule | None:
    """The version in force at ``at``: latest effective_from not after it, newest version."""
    r = await conn.fetchrow(
        f"""SELECT version, effective_from, {", ".join(_SCHEDULE_FIELDS)}
              FROM fee_schedules
             WHERE mall_id = $1 AND car_park_id = $2 AND effective_from <= $3
             ORDER BY effective_from DESC, version DESC LIMIT 1""",
        mall_id,
        car_park_id,
        at,
    )
    if r is None:
        return None
    return FeeSchedule(
        **{f: r[f] for f in _SCHEDULE_FIELDS},
        effective_from=r["effective_from"],
        version=r["version"],
    )
