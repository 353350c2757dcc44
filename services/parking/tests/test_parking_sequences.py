"""Whatever a car park's gates send, in any order — entries, resends, exits with and without an
entry, cars that reach the barrier and turn back — the sessions stay consistent, on the real
database: one open session per plate, one session per entry, every exit settled as quoted, and
each irregularity recorded once for the operator."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit.migrations import migrate
from mall_testing.plugin import FreshDatabase
from parking.adapters import tariffs
from parking.bootstrap import MIGRATIONS
from parking.domain.fees import FeeSchedule
from parking.domain.plates import Color
from parking.domain.sessions import PaymentMethod, Status
from parking.service_layer import entries, quotes, settlements
from parking.service_layer.config_cache import ConfigCache

PLATES = ("粤B10001", "粤B10002", "沪AD12345")
START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def pool(fresh_database: FreshDatabase) -> AsyncIterator[asyncpg.Pool]:
    url = await fresh_database("parking")
    await migrate(url, MIGRATIONS)
    async with asyncpg.create_pool(url, min_size=1, max_size=4) as pool:
        yield pool


steps = st.lists(
    st.tuples(
        st.sampled_from(["enter", "resend", "leave", "turn_back"]),
        st.integers(0, len(PLATES) - 1),
        st.integers(1, 240),  # minutes since the previous step
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps)
async def test_any_sequence_of_gate_calls_keeps_sessions_consistent(
    pool: asyncpg.Pool, steps: list[tuple[str, int, int]]
) -> None:
    mall_id, car_park_id = f"mall-{uuid.uuid4().hex[:10]}", "p1"
    async with pool.acquire() as conn, conn.transaction():
        await tariffs.add_schedule(
            conn, mall_id, car_park_id, FeeSchedule(15, 30, 300, 5000), START - timedelta(days=1)
        )
    config = ConfigCache()
    inside = dict.fromkeys(PLATES, False)
    last_ref: dict[str, tuple[str, datetime, str]] = {}
    expected: Counter[str] = Counter()
    at = START
    for action, index, gap in steps:
        at += timedelta(minutes=gap)
        plate = PLATES[index]
        color = Color.GREEN if len(plate) == 8 else Color.BLUE
        if action == "resend" and plate in last_ref:
            ref, entered_at, session_id = last_ref[plate]
            async with pool.acquire() as conn:
                again = await entries.record_entry(
                    conn,
                    entries.Entry(mall_id, car_park_id, plate, color, entered_at, ref),
                )
            assert again.duplicate
            assert again.session.session_id == session_id
            continue
        if action in ("enter", "resend"):
            ref = uuid.uuid4().hex
            async with pool.acquire() as conn:
                entered = await entries.record_entry(
                    conn, entries.Entry(mall_id, car_park_id, plate, color, at, ref)
                )
            assert not entered.duplicate
            if inside[plate]:
                expected["entry_while_inside"] += 1
            inside[plate] = True
            last_ref[plate] = (ref, at, entered.session.session_id)
            continue
        quoted, _ = await quotes.quote_exit(
            pool, config, None, quotes.ExitQuery(mall_id, car_park_id, plate, color, at)
        )
        q = quoted.quote
        assert q.gross_fee_fen - q.discount_fen == q.payable_fen >= 0
        if not inside[plate]:
            expected["exit_without_entry"] += 1
            assert quoted.session.entry_missing
        inside[plate] = True  # a car at the barrier is inside until it is let out
        if action == "turn_back":
            continue
        async with pool.acquire() as conn:
            settled, _ = await settlements.settle_exit(
                conn,
                settlements.Settlement(
                    mall_id,
                    car_park_id,
                    quoted.session.session_id,
                    q.quote_id,
                    q.payable_fen,
                    PaymentMethod.PAID_AT_EXIT,
                    q.quoted_at,
                ),
            )
        assert settled.status == Status.SETTLED
        assert settled.gross_fee_fen - settled.discount_fen == settled.paid_fen == q.payable_fen
        inside[plate] = False

    async with pool.acquire() as conn:
        open_by_plate = {
            r["plate_number"]: r["count"]
            for r in await conn.fetch(
                """SELECT plate_number, count(*) FROM sessions
                    WHERE mall_id = $1 AND status = 'open' GROUP BY plate_number""",
                mall_id,
            )
        }
        recorded = Counter(
            {
                r["kind"]: r["count"]
                for r in await conn.fetch(
                    "SELECT kind, count(*) FROM anomalies WHERE mall_id = $1 GROUP BY kind",
                    mall_id,
                )
            }
        )
        refs = await conn.fetchval(
            """SELECT count(*) = count(DISTINCT entry_ref) FROM sessions
                WHERE mall_id = $1 AND entry_ref IS NOT NULL""",
            mall_id,
        )
    assert open_by_plate == {p: 1 for p, now_inside in inside.items() if now_inside}
    assert recorded == expected
    assert refs
