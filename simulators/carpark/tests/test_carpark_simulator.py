"""The car-park simulator as its own process, driving a real parking service."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import nats
import pytest
from carpark_simulator.plates import random_plate
from kit.cli import serving
from kit.credentials import hash_secret
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.migrations import migrate
from kit.proto import timestamp
from mall.member.v1 import directory_pb2
from mall.member.v1 import events_pb2 as member_events
from mall.parking.v1 import parking_pb2 as pb
from mall.parking.v1 import parking_service_pb2 as api
from mall.parking.v1 import parking_service_pb2_grpc as stubs
from mall_testing.plugin import FreshDatabase
from parking.bootstrap import MIGRATIONS, bootstrap
from parking.config import Settings
from parking.domain.plates import Color, validate_plate


@dataclass
class Parking:
    database_url: str
    target: str
    admin: stubs.ParkingAdminServiceAsyncStub
    parking: stubs.ParkingServiceAsyncStub
    js: nats.js.JetStreamContext


@pytest.fixture(scope="module")
async def parking(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[Parking]:
    url = await fresh_database("parking")
    await migrate(url, MIGRATIONS)
    settings = Settings(
        database_url=url,
        nats_url=nats_url,
        grpc_port=0,
        log_level="warning",
        points_grpc_target="",
    )
    nc = await nats.connect(nats_url)
    try:
        async with (
            bootstrap(settings) as roles,
            serving(roles, ("serve", "consume")) as target,
            grpc.aio.insecure_channel(target) as channel,
        ):
            yield Parking(
                url,
                target,
                stubs.ParkingAdminServiceStub(channel),
                stubs.ParkingServiceStub(channel),
                nc.jetstream(),
            )
    finally:
        await nc.close()


async def credential_known(target: str, mall_id: str, car_park_id: str, presented: str) -> None:
    """Until parking's copy of the directory holds the credential: a call gets past the check
    (NOT_FOUND for a session that does not exist)."""
    async with grpc.aio.insecure_channel(target) as channel:
        gates = stubs.CarParkServiceStub(channel)
        for _ in range(200):
            try:
                await gates.SettleExit(
                    api.SettleExitRequest(
                        mall_id=mall_id,
                        car_park_id=car_park_id,
                        session_id=str(uuid.uuid4()),
                        quote_id=str(uuid.uuid4()),
                        payment_method=pb.PAYMENT_METHOD_CASH,
                    ),
                    metadata=(("x-mall-credential", presented),),
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("the credential never reached parking")


def test_the_simulator_reads_plates_parking_accepts() -> None:
    rng = random.Random(7)
    for _ in range(500):
        plate, color = random_plate(rng, new_energy=rng.random() < 0.5)
        assert validate_plate(plate, Color(color)) == plate


async def test_the_simulator_process_drives_cars_in_and_out(
    parking: Parking, unique_id: str
) -> None:
    mall_id, car_park_id = f"mall-{unique_id}", f"park-{unique_id}"
    secret, credential_id = uuid.uuid4().hex, f"cred-{unique_id}"
    credential = directory_pb2.Credential(
        mall_id=mall_id,
        credential_id=credential_id,
        car_park_id=car_park_id,
        secret_hash=hash_secret(secret),
    )
    bucket = await open_bucket(parking.js, DIRECTORY_BUCKET)  # as member projects it
    await bucket.put(
        f"credential.{credential.mall_id}.{credential.credential_id}",
        credential.SerializeToString(),
    )
    await parking.admin.PutFeeSchedule(
        api.PutFeeScheduleRequest(
            schedule=pb.FeeSchedule(
                mall_id=mall_id,
                car_park_id=car_park_id,
                free_minutes=15,
                unit_minutes=30,
                unit_fee_fen=300,
                daily_cap_fen=5000,
                effective_from=timestamp(datetime(2020, 1, 1, tzinfo=UTC)),
            )
        )
    )
    await parking.admin.PutParkingPolicy(
        api.PutParkingPolicyRequest(
            policy=pb.ParkingPolicy(
                mall_id=mall_id, tier_benefits=[pb.TierBenefit(tier_code="gold", free_minutes=600)]
            )
        )
    )
    member_plate = f"粤B{int(unique_id, 16) % 100_000:05d}"
    member_id = str(uuid.uuid4())
    await parking.parking.BindPlate(
        api.BindPlateRequest(
            mall_id=mall_id,
            member_id=member_id,
            plate_number=member_plate,
            plate_color=pb.PLATE_COLOR_BLUE,
        )
    )
    await parking.js.publish(
        "member.tier.changed",
        member_events.TierChanged(
            mall_id=mall_id,
            member_id=member_id,
            tier_code="gold",
            occurred_at=timestamp(datetime.now(UTC)),
        ).SerializeToString(),
        headers={"Nats-Msg-Id": str(uuid.uuid4())},
    )
    conn = await asyncpg.connect(parking.database_url)
    try:  # the tier reaches parking's consumer
        for _ in range(200):
            if await conn.fetchval(
                "SELECT count(*) FROM member_tiers WHERE member_id = $1", member_id
            ):
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    await credential_known(parking.target, mall_id, car_park_id, f"{credential_id}.{secret}")
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "carpark_simulator",
        "--target",
        parking.target,
        "--mall-id",
        mall_id,
        "--car-park-id",
        car_park_id,
        "--credential",
        f"{credential_id}.{secret}",
        "--cars",
        "30",
        "--concurrency",
        "4",
        "--max-stay",
        "480",
        "--plate",
        member_plate,
        "--seed",
        "11",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    summary = json.loads(out)

    assert proc.returncode == 0, summary
    assert (summary["entries"], summary["exits"], summary["errors"]) == (30, 30, 0)
    assert summary["gross_fee_fen"] == summary["discount_fen"] + summary["paid_fen"]
    assert summary["methods"]["BENEFITS_ONLY"] >= 1  # the gold member's car, at least
    figures = await parking.admin.GetDailyFigures(
        api.GetDailyFiguresRequest(mall_id=mall_id, business_day=today)
    )
    (day,) = figures.car_parks
    assert (day.sessions_settled, day.visitor_sessions) == (30, 29)
    assert day.revenue_fen == summary["paid_fen"]
    assert day.discount_fen == summary["discount_fen"]
