"""`make run`'s car park: a fee schedule, a credential for its gates, and a first wave of cars
driven through them by the car-park simulator (a real process speaking CarParkService)."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
from kit.proto import timestamp
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc
from mall.parking.v1 import parking_pb2, parking_service_pb2, parking_service_pb2_grpc
from mall_testing.demo import DemoMall

from deploy.local.settings import RunSettings

CARS = 12

if TYPE_CHECKING:
    Gates = parking_service_pb2_grpc.CarParkServiceAsyncStub


async def open_car_park(settings: RunSettings, mall: DemoMall) -> str:
    """Fee schedule and a new gate credential (``<id>.<secret>``), once parking accepts it."""
    async with grpc.aio.insecure_channel(settings.grpc_target("member")) as channel:
        issued = await member_service_pb2_grpc.DirectoryServiceStub(channel).IssueCredential(
            member_service_pb2.IssueCredentialRequest(
                mall_id=mall.mall_id, car_park_id=mall.car_park_id, label="make run gates"
            ),
            timeout=10,
        )
    credential = f"{issued.credential.credential_id}.{issued.secret}"
    async with grpc.aio.insecure_channel(settings.grpc_target("parking")) as channel:
        await parking_service_pb2_grpc.ParkingAdminServiceStub(channel).PutFeeSchedule(
            parking_service_pb2.PutFeeScheduleRequest(
                # 30 free minutes, then 5 yuan per started hour (3 at night), 50 a day at most.
                schedule=parking_pb2.FeeSchedule(
                    mall_id=mall.mall_id,
                    car_park_id=mall.car_park_id,
                    effective_from=timestamp(datetime(2020, 1, 1, tzinfo=UTC)),
                    free_minutes=30,
                    unit_minutes=60,
                    unit_fee_fen=500,
                    daily_cap_fen=5000,
                    night_start_minute=22 * 60,
                    night_end_minute=7 * 60,
                    night_unit_fee_fen=300,
                )
            ),
            timeout=10,
        )
        gates: Gates = parking_service_pb2_grpc.CarParkServiceStub(channel)
        for _ in range(200):  # parking's copy of the directory learns the credential
            if await _accepted(gates, mall, credential):
                return credential
            await asyncio.sleep(0.05)
    raise RuntimeError("parking never accepted the car park's credential")


async def _accepted(gates: Gates, mall: DemoMall, credential: str) -> bool:
    """A settlement of a session that does not exist: refused for what it is once the
    caller is known, UNAUTHENTICATED / UNAVAILABLE before."""
    try:
        await gates.SettleExit(
            parking_service_pb2.SettleExitRequest(
                mall_id=mall.mall_id,
                car_park_id=mall.car_park_id,
                session_id=str(uuid.uuid4()),
                quote_id=str(uuid.uuid4()),
                payment_method=parking_pb2.PAYMENT_METHOD_CASH,
            ),
            metadata=(("x-mall-credential", credential),),
            timeout=5,
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
    return True


async def drive_cars(settings: RunSettings, mall: DemoMall, credential: str) -> dict[str, Any]:
    """The car-park simulator's summary of one wave of cars in and out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "carpark_simulator",
        "--target",
        settings.grpc_target("parking"),
        "--mall-id",
        mall.mall_id,
        "--car-park-id",
        mall.car_park_id,
        "--credential",
        credential,
        "--cars",
        str(CARS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the car-park simulator failed: {err.decode()[-500:]}")
    summary: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return summary
