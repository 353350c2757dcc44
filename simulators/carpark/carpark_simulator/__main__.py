"""``python -m carpark_simulator``: drive vehicles through a car park's gates, print a summary.

Every option can also come from the environment (CARPARK_TARGET, CARPARK_MALL_ID,
CARPARK_ID, CARPARK_CREDENTIAL), so ``make run`` can start it like any other program.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

import grpc

from carpark_simulator.gate import Gate
from carpark_simulator.traffic import drive


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m carpark_simulator", description=__doc__)
    p.add_argument("--target", default=env("CARPARK_TARGET", "127.0.0.1:50063"))
    p.add_argument("--mall-id", default=env("CARPARK_MALL_ID", "demo-mall"))
    p.add_argument("--car-park-id", default=env("CARPARK_ID", "p1"))
    p.add_argument(
        "--credential",
        default=env("CARPARK_CREDENTIAL", ""),
        help="<credential_id>.<secret> issued by member's DirectoryService.IssueCredential",
    )
    p.add_argument("--cars", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--min-stay", type=int, default=5, help="minutes")
    p.add_argument("--max-stay", type=int, default=300, help="minutes")
    p.add_argument(
        "--plate",
        action="append",
        default=[],
        help="a member's plate to drive first, NUMBER or NUMBER:COLOUR (repeatable)",
    )
    p.add_argument("--seed", type=int, default=None)
    ns = p.parse_args(argv)
    if not ns.credential:
        p.error("--credential (or CARPARK_CREDENTIAL) is required")
    return ns


async def run(ns: argparse.Namespace) -> dict[str, object]:
    plates = []
    for given in ns.plate:
        number, _, color = given.partition(":")
        plates.append((number, (color or "BLUE").upper()))
    async with grpc.aio.insecure_channel(ns.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        gate = Gate(
            channel, mall_id=ns.mall_id, car_park_id=ns.car_park_id, credential=ns.credential
        )
        stats = await drive(
            gate,
            cars=ns.cars,
            concurrency=ns.concurrency,
            min_stay_min=ns.min_stay,
            max_stay_min=ns.max_stay,
            known_plates=plates,
            seed=ns.seed,
        )
    return stats.as_dict()


def main(argv: Sequence[str] | None = None) -> int:
    summary = asyncio.run(run(parse(argv)))
    sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
