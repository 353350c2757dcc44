"""Traffic: vehicles entering, staying a while, leaving, many lanes at once.

Stays are simulated, not waited: a vehicle is recorded entering ``stay`` minutes before now and
leaves now, so hours of traffic take seconds. Some plates can be given (members' cars, to see
their benefits); the rest are visitors with random plates.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from carpark_simulator.gate import Gate
from carpark_simulator.plates import random_plate

log = structlog.get_logger(__name__)


@dataclass
class Stats:
    entries: int = 0
    exits: int = 0
    errors: int = 0
    gross_fee_fen: int = 0
    discount_fen: int = 0
    paid_fen: int = 0
    methods: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "entries": self.entries,
            "exits": self.exits,
            "errors": self.errors,
            "gross_fee_fen": self.gross_fee_fen,
            "discount_fen": self.discount_fen,
            "paid_fen": self.paid_fen,
            "methods": dict(self.methods),
            "elapsed_s": round(self.elapsed_s, 3),
            "vehicles_per_s": round(self.exits / self.elapsed_s, 1) if self.elapsed_s else 0.0,
        }


async def drive(
    gate: Gate,
    *,
    cars: int,
    concurrency: int = 8,
    min_stay_min: int = 5,
    max_stay_min: int = 300,
    known_plates: list[tuple[str, str]] | None = None,
    seed: int | None = None,
) -> Stats:
    """``cars`` vehicles in and out through ``concurrency`` lanes; known plates come first."""
    rng = random.Random(seed)
    vehicles = list(known_plates or [])
    while len(vehicles) < cars:
        vehicles.append(random_plate(rng, new_energy=rng.random() < 0.2))
    queue = iter(vehicles[:cars])
    stats = Stats()

    async def lane() -> None:
        for plate, color in queue:
            now = datetime.now(UTC)
            stay = timedelta(minutes=rng.randint(min_stay_min, max_stay_min))
            try:
                await gate.enter(plate, color, now - stay)
                stats.entries += 1
                left = await gate.leave(plate, now)
            except Exception as exc:
                stats.errors += 1
                log.warning("vehicle_failed", plate=plate, error=repr(exc))
                continue
            stats.exits += 1
            stats.gross_fee_fen += left.gross_fee_fen
            stats.discount_fen += left.discount_fen
            stats.paid_fen += left.paid_fen
            stats.methods[left.method] += 1

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(max(1, concurrency))))
    stats.elapsed_s = time.perf_counter() - started
    return stats
