"""SQL for what the gates reported that a person should look at."""

from __future__ import annotations

import uuid
from typing import Any

from kit.db import Connection


async def record_anomaly(
    conn: Connection,
    *,
    mall_id: str,
    car_park_id: str,
    plate_number: str,
    session_id: str | None,
    kind: str,
    detail: str,
) -> None:
    await conn.execute(
        """INSERT INTO anomalies (anomaly_id, mall_id, car_park_id, plate_number, session_id,
                kind, detail)
           VALUES ($1::uuid, $2, $3, $4, $5::uuid, $6, $7)""",
        str(uuid.uuid4()),
        mall_id,
        car_park_id,
        plate_number,
        session_id,
        kind,
        detail,
    )


async def list_anomalies(
    conn: Connection, mall_id: str, car_park_id: str, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT anomaly_id::text, kind, car_park_id, plate_number,
                  coalesce(session_id::text, '') AS session_id, detail, created_at
             FROM anomalies
            WHERE mall_id = $1 AND ($2 = '' OR car_park_id = $2)
            ORDER BY created_at DESC LIMIT $3""",
        mall_id,
        car_park_id,
        limit,
    )
    return [dict(r) for r in rows]
