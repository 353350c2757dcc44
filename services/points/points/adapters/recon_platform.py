"""The platform's own record of a window: the payments and refunds WeChat Pay notified and
whether it holds each payment's points sync.

WeChat Pay's smart-mall API (see /work/shared/WECHATPAY.md) has no statement call for
notified payments; the WeChat Pay simulator answers one at ``GET /control/bill``. In
production the same shape would come from the merchant's trade bill. Unset
``WECHATPAY_BILL_URL``: the platform side is skipped and said so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from kit.errors import Unavailable

from points.domain.recon import Payment, PlatformSync, Refund

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PlatformRecord:
    payments: dict[str, Payment]
    refunds: dict[str, Refund]
    syncs: dict[str, PlatformSync]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def parse_bill(body: dict[str, Any]) -> PlatformRecord:
    payments: dict[str, Payment] = {}
    syncs: dict[str, PlatformSync] = {}
    for p in body.get("payments", []):
        tx = str(p["transaction_id"])
        payments[tx] = Payment(tx, int(p["amount"]), _time(p["time_end"]), appid=str(p["appid"]))
        points = p.get("synced_points")
        syncs[tx] = PlatformSync(
            bool(p.get("points_synced")), None if points is None else int(points)
        )
    refunds = {
        str(r["refund_id"]): Refund(
            str(r["refund_id"]),
            str(r["transaction_id"]),
            int(r["refund_amount"]),
            _time(r["refund_time"]),
        )
        for r in body.get("refunds", [])
    }
    return PlatformRecord(payments, refunds, syncs)


async def fetch_bill(url: str, mchid: str, since: datetime, until: datetime) -> PlatformRecord:
    """The platform's payments and refunds from ``since`` to ``until`` (every appid)."""
    params = {"since": since.isoformat(), "until": until.isoformat()}
    if mchid:
        params["mchid"] = mchid
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, params=params) as resp,
        ):
            resp.raise_for_status()
            return parse_bill(await resp.json())
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        raise Unavailable(
            "platform_bill_unavailable", f"the platform's bill ({url}) could not be read: {exc!r}"
        ) from exc
