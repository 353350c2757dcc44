"""The mall's parking configuration (time zone, policy, fee schedules), cached in-process.

Every exit quote needs it and it changes rarely, so each replica keeps it for ``ttl_s``: a
change made through another replica is seen within that time (this replica's own admin calls
drop the entry at once). Saves three database round trips per quote.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from kit.db import Connection

from parking.adapters import directory, tariffs
from parking.domain.benefits import ParkingPolicy
from parking.domain.fees import FeeSchedule, schedule_in_force

DEFAULT_TTL_S = 5.0


@dataclass(frozen=True)
class MallConfig:
    time_zone: ZoneInfo
    policy: ParkingPolicy


class ConfigCache:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._malls: dict[str, tuple[float, MallConfig]] = {}
        self._schedules: dict[tuple[str, str], tuple[float, list[FeeSchedule]]] = {}

    async def mall(self, conn: Connection, mall_id: str) -> MallConfig:
        now = time.monotonic()
        hit = self._malls.get(mall_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await directory.get_mall(conn, mall_id)
        policy, _ = await tariffs.get_policy(conn, mall_id)
        config = MallConfig(ZoneInfo(row.time_zone), policy)
        self._malls[mall_id] = (now + self._ttl_s, config)
        return config

    async def schedule_at(
        self, conn: Connection, mall_id: str, car_park_id: str, at: datetime
    ) -> FeeSchedule | None:
        key = (mall_id, car_park_id)
        now = time.monotonic()
        hit = self._schedules.get(key)
        if hit is None or hit[0] <= now:
            versions = [s for s, _ in await tariffs.list_schedules(conn, mall_id, car_park_id)]
            hit = (now + self._ttl_s, versions)
            self._schedules[key] = hit
        return schedule_in_force(hit[1], at)

    def invalidate(self, mall_id: str) -> None:
        self._malls.pop(mall_id, None)
        for key in [k for k in self._schedules if k[0] == mall_id]:
            self._schedules.pop(key, None)
