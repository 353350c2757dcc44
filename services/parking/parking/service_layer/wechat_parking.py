"""Calls to WeChat Pay about sessions, from the queue the gates fill in their transactions:
parking state sync (IN at entry, OUT at exit) for shoppers who authorised the mall, and
pay-score parking (find the plate's service, report the entry, deduct the fee after the exit).

Each call is retried with growing gaps while the platform is unavailable, and marked failed
(for ops, GetSession) when the platform refuses it. Rows are leased, so several relay
replicas share the queue without sending a call twice at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import structlog
from kit.db import Connection
from wechatpay.client import PlatformRefused, PlatformUnavailable, rfc3339

from parking.adapters import directory, tariffs, wechat_calls
from parking.adapters.wechat_calls import CallRow
from parking.adapters.wechatpay import ParkingPlatform

log = structlog.get_logger(__name__)

LEASE_S = 60.0


@dataclass(frozen=True)
class SendRun:
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    retrying: int = 0


class NotYet(Exception):
    """The call depends on another that has not gone through yet: try again later."""


def _time(value: str, tz: ZoneInfo) -> str:
    return rfc3339(datetime.fromisoformat(value).astimezone(tz))


def _out_no(session_id: str) -> str:
    return session_id.replace("-", "")  # 32 characters, as the platform allows


async def _call(conn: Connection, platform: ParkingPlatform, call: CallRow) -> tuple[str, str]:
    """(state, platform reference) once the platform answered."""
    mall = await directory.get_mall(conn, call.mall_id)
    tz = ZoneInfo(mall.time_zone)
    p = call.payload
    if call.kind in ("state_in", "state_out"):
        await platform.sync_state(
            {
                "appid": p["appid"],
                "openid": p["openid"],
                "brandid": mall.brand_id,
                "plate_number": p["plate_number"],
                "state": "IN" if call.kind == "state_in" else "OUT",
                "time": _time(p["time"], tz),
            }
        )
        return "sent", ""
    if call.kind == "pay_score_entry":
        service = await platform.service_state(
            p["appid"], p["plate_number"], p["plate_color"], p["openid"]
        )
        if service != "NORMAL":
            return "skipped", ""
        entered = datetime.fromisoformat(p["time"])
        schedule = await tariffs.schedule_at(conn, call.mall_id, p["car_park_id"], entered)
        parking_id = await platform.report_entry(
            {
                "out_parking_no": _out_no(call.session_id),
                "plate_number": p["plate_number"],
                "plate_color": p["plate_color"],
                "start_time": _time(p["time"], tz),
                "parking_name": await directory.car_park_name(conn, call.mall_id, p["car_park_id"]),
                "free_duration": 60 * (schedule.free_minutes if schedule else 0),
            }
        )
        await conn.execute(
            "UPDATE sessions SET pay_score = true WHERE mall_id = $1 AND session_id = $2::uuid",
            call.mall_id,
            call.session_id,
        )
        return "sent", parking_id
    if call.kind == "pay_score_deduction":
        if p["total"] <= 0:
            return "skipped", ""
        entry = await conn.fetchrow(
            """SELECT state, platform_ref, payload FROM wechat_calls
                WHERE mall_id = $1 AND session_id = $2::uuid AND kind = 'pay_score_entry'""",
            call.mall_id,
            call.session_id,
        )
        if entry is None or entry["state"] != "sent":
            raise NotYet("the pay-score entry has not been reported yet")
        payload = json.loads(entry["payload"])
        name = await directory.car_park_name(conn, call.mall_id, payload["car_park_id"])
        await platform.deduct(_deduction(call, entry["platform_ref"], payload, name, tz))
        return "sent", _out_no(call.session_id)
    raise ValueError(f"unknown call kind {call.kind}")


def _deduction(
    call: CallRow, parking_id: str, e: dict[str, Any], parking_name: str, tz: ZoneInfo
) -> dict[str, Any]:
    p = call.payload
    return {
        "appid": e["appid"],
        "out_trade_no": _out_no(call.session_id),
        "description": "停车费",
        "trade_scene": "PARKING",
        "amount": {"total": p["total"], "currency": "CNY"},
        "parking_info": {
            "parking_id": parking_id,
            "plate_number": p["plate_number"],
            "plate_color": e["plate_color"],
            "start_time": _time(p["start_time"], tz),
            "end_time": _time(p["end_time"], tz),
            "charging_duration": p["charging_duration"],
            "parking_name": parking_name,
            "device_id": "out-1",
        },
    }


async def send_due(
    pool: asyncpg.Pool, platform: ParkingPlatform, *, batch: int = 50, retry_max_s: float = 600
) -> SendRun:
    """Send what is due now; the outcome of each call is recorded on its row."""
    async with pool.acquire() as conn:
        calls = await wechat_calls.claim_due(conn, batch, LEASE_S)
    counts = {"sent": 0, "skipped": 0, "failed": 0, "retrying": 0}
    for call in calls:
        async with pool.acquire() as conn:
            retry_s = min(retry_max_s, 2.0**call.attempts)
            try:
                state, ref = await _call(conn, platform, call)
            except PlatformRefused as exc:
                log.error("wechat_parking_refused", kind=call.kind, code=exc.code)
                await wechat_calls.finish(conn, call.id, state="failed", error=str(exc))
                counts["failed"] += 1
                continue
            except (PlatformUnavailable, NotYet) as exc:
                log.warning("wechat_parking_retry", kind=call.kind, error=str(exc))
                await wechat_calls.finish(
                    conn, call.id, state="pending", error=str(exc), retry_in_s=retry_s
                )
                counts["retrying"] += 1
                continue
            await wechat_calls.finish(conn, call.id, state=state, platform_ref=ref)
            counts[state] += 1
    return SendRun(**counts)
