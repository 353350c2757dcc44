"""Who is calling parking's gRPC API: the server's ``authenticate`` hook.

CarParkService RPCs require ``x-mall-credential: <credential_id>.<secret>`` of a valid,
unrevoked car-park credential (``kit.directory``: the copy of member's DIRECTORY bucket held in
memory by the serve role; calls are refused as UNAVAILABLE until the copy is loaded); the
servicer checks that the request's mall and car park are the caller's own. A caller presenting
a credential on any other RPC is refused, so a car park cannot read members' plates.
ParkingService (the gateway's, no ops-only RPC in it) stays inside the cluster, guarded by the
network policy; ParkingAdminService (ops) is served on the admin port alone when
ADMIN_GRPC_PORT is set (reached by port-forward).

Verified secrets are remembered in-process for ``cache_s`` (``kit.credentials.VerifiedCallers``)
so the scrypt cost is paid once per credential and replica; a revoked credential keeps working
on a replica for at most that long.
"""

from __future__ import annotations

import asyncio
import contextvars

from kit.credentials import CREDENTIAL_HEADER, VerifiedCallers, parse_presented, verify_secret
from kit.directory import Directory
from kit.errors import Forbidden, Unauthenticated, Unavailable
from kit.grpc_server import Metadata

from parking.domain.credentials import CarParkCaller

CAR_PARK_PREFIX = "/mall.parking.v1.CarParkService/"

_caller: contextvars.ContextVar[CarParkCaller | None] = contextvars.ContextVar(
    "parking_caller", default=None
)


def car_park_caller(mall_id: str, car_park_id: str) -> CarParkCaller:
    """The car park behind the current call, which must be the request's; refuses otherwise
    (a servicer served without the hook stays closed)."""
    caller = _caller.get()
    if caller is None:
        raise Unauthenticated("invalid_credential", "a car-park credential is required")
    if (mall_id, car_park_id) != (caller.mall_id, caller.car_park_id):
        raise Forbidden("car_park_not_yours", "the credential is not for this mall and car park")
    return caller


class CarParkAuthenticator:
    """``authenticate(method, metadata)`` for the gRPC server; returns log-context fields."""

    def __init__(self, directory: Directory, *, cache_s: float = 30.0) -> None:
        self._directory = directory
        self._verified: VerifiedCallers[CarParkCaller] = VerifiedCallers(cache_s=cache_s)

    async def __call__(self, method: str, metadata: Metadata) -> dict[str, str]:
        _caller.set(None)
        presented = metadata.get(CREDENTIAL_HEADER, "")
        if not method.startswith(CAR_PARK_PREFIX):
            if presented:
                raise Forbidden("rpc_not_for_car_parks", f"{method} is not open to car parks")
            return {}
        if not presented:
            raise Unauthenticated("invalid_credential", f"{CREDENTIAL_HEADER} is required")
        caller = await self._verify(presented)
        _caller.set(caller)
        return {
            "mall_id": caller.mall_id,
            "car_park_id": caller.car_park_id,
            "credential_id": caller.credential_id,
        }

    async def _verify(self, presented: str) -> CarParkCaller:
        return await self._verified.get(presented, self._check)

    async def _check(self, presented: str) -> CarParkCaller:
        credential_id, secret = parse_presented(presented)
        if not self._directory.ready:
            raise Unavailable("directory_not_ready", "the directory is loading; retry shortly")
        row = self._directory.credential(credential_id)
        if (
            row is None
            or row.revoked
            or not await asyncio.to_thread(verify_secret, secret, row.secret_hash)
        ):
            raise Unauthenticated("invalid_credential", "unknown, revoked or wrong credential")
        if not row.car_park_id:
            raise Forbidden("not_a_car_park_credential", "this API needs a car-park credential")
        return CarParkCaller(row.mall_id, row.car_park_id, row.credential_id)
