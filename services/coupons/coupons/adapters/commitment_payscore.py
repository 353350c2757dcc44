"""The pay-score deduction a failed commitment card's clawback is collected through, and the
WeChat Pay client coupons builds from its settings (keys read from files, at start).

The deduction is the platform's "create and complete in one" service order
(``POST /v3/payscore/serviceorder/direct-complete``): one order per card (``out_order_no``
derived from the card id), so a retried call can never deduct twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from wechatpay.client import PlatformUnavailable, WeChatPayClient

DIRECT_COMPLETE = "/v3/payscore/serviceorder/direct-complete"


class PayScore(Protocol):
    async def deduct(
        self,
        *,
        appid: str,
        openid: str,
        out_order_no: str,
        amount_fen: int,
        started_at: datetime,
        ended_at: datetime,
    ) -> str:
        """Deduct ``amount_fen``; the platform's order id. Raises the client's errors."""
        ...


def _compact(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


class WeChatPayScore:
    """``PayScore`` over the signed client (which must be open: ``async with client``)."""

    def __init__(self, client: WeChatPayClient, *, service_id: str, notify_url: str) -> None:
        self._client = client
        self._service_id = service_id
        self._notify_url = notify_url

    async def deduct(
        self,
        *,
        appid: str,
        openid: str,
        out_order_no: str,
        amount_fen: int,
        started_at: datetime,
        ended_at: datetime,
    ) -> str:
        body = {
            "appid": appid,
            "service_id": self._service_id,
            "out_order_no": out_order_no,
            "service_introduction": "先享卡未完成约定，收回已享优惠",
            "post_payments": [{"name": "先享卡优惠退回", "amount": amount_fen, "count": 1}],
            "total_amount": amount_fen,
            "time_range": {"start_time": _compact(started_at), "end_time": _compact(ended_at)},
            "openid": openid,
            "notify_url": self._notify_url,
        }
        _, answer = await self._client.request("POST", DIRECT_COMPLETE, body)
        if not isinstance(answer, dict) or not answer.get("order_id"):
            raise PlatformUnavailable("direct-complete answered without an order_id")
        return str(answer["order_id"])
