"""Who a car-park system's credential speaks for, once checked (see entrypoints.auth and
kit.credentials: the secret is verified locally against the hash member distributes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CarParkCaller:
    mall_id: str
    car_park_id: str
    credential_id: str
