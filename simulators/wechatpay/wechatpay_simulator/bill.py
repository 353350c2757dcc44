"""The platform's statement of what it notified: payments and refunds over a time range, and
whether it holds each payment's points sync. The smart-mall API has no such call (the real
platform's trade bill is a daily file); Mall Circle's reconciliation reads this one instead.

``GET /control/bill?since=&until=[&mchid=]`` (ISO 8601 times with an offset; ``until``
defaults to now) → ``{"payments": [...], "refunds": [...]}``: payments by ``time_end``,
refunds by ``refund_time``, within ``[since, until)``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from wechatpay_simulator.fields import param_error
from wechatpay_simulator.keys import STATE
from wechatpay_simulator.state import Payment, PlatformState, now, rfc3339


def _moment(query: dict[str, str], name: str) -> datetime | None:
    text = query.get(name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace(" ", "+"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise param_error(f"{name} must be an ISO 8601 time with an offset")
    return moment


def _synced_points(state: PlatformState) -> dict[str, int]:
    """Points of each payment's first accepted sync (its credit; later ones report refunds)."""
    first: dict[str, int] = {}
    for sync in state.points_syncs:
        body = sync.body
        if sync.status == 204 and isinstance(body, dict):
            first.setdefault(str(body.get("transaction_id")), int(body.get("increased_points", 0)))
    return first


def _payment(state: PlatformState, p: Payment, synced: dict[str, int]) -> dict[str, Any]:
    return {
        "transaction_id": p.transaction_id,
        "mchid": p.mchid,
        "sub_mchid": p.sub_mchid,
        "appid": p.appid,
        "openid": p.openid,
        "amount": p.amount,
        "refunded": p.refunded,
        "time_end": rfc3339(p.time_end),
        "points_synced": state.points_synced(p.transaction_id),
        "synced_points": synced.get(p.transaction_id),
    }


def statement(
    state: PlatformState, since: datetime, until: datetime, mchid: str | None = None
) -> dict[str, Any]:
    synced = _synced_points(state)
    payments = [
        _payment(state, p, synced)
        for p in state.payments.values()
        if since <= p.time_end < until and (mchid is None or p.mchid == mchid)
    ]
    refunds = []
    for r in state.refunds.values():
        paid = state.payments[r.transaction_id]
        resource = state.deliveries[r.notification_id].resource
        refunded_at = datetime.fromisoformat(resource["refund_time"])
        if since <= refunded_at < until and (mchid is None or paid.mchid == mchid):
            refunds.append(
                {
                    "refund_id": r.refund_id,
                    "transaction_id": r.transaction_id,
                    "appid": paid.appid,
                    "refund_amount": r.refund_amount,
                    "refund_time": resource["refund_time"],
                }
            )
    return {"payments": payments, "refunds": refunds}


async def get_bill(request: web.Request) -> web.Response:
    query = dict(request.query)
    since = _moment(query, "since")
    if since is None:
        raise param_error("since is required")
    until = _moment(query, "until") or now()
    body = statement(request.app[STATE], since, until, query.get("mchid") or None)
    return web.json_response(body)
