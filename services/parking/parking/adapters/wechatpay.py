"""The platform's parking calls (state sync, pay-score parking) on top of the signed exchange
of the client built from parking's settings (``MerchantSettings.wechatpay_client``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from wechatpay.client import WeChatPayClient


class ParkingPlatform:
    """The platform's parking calls. Raises wechatpay.client errors (refused / unavailable)."""

    def __init__(self, client: WeChatPayClient) -> None:
        self._client = client

    async def sync_state(self, body: dict[str, Any]) -> None:
        """停车状态同步: IN / OUT for an authorised shopper; answered 204."""
        await self._client.request("POST", "/v3/businesscircle/parkings", body)

    async def service_state(self, appid: str, plate: str, color: str, openid: str) -> str:
        """Whether the plate is in pay-score parking: NORMAL when it is."""
        query = urlencode(
            {"appid": appid, "plate_number": plate, "plate_color": color, "openid": openid}
        )
        _, answer = await self._client.request("GET", f"/v3/vehicle/parking/services/find?{query}")
        return str((answer or {}).get("service_state", ""))

    async def report_entry(self, body: dict[str, Any]) -> str:
        """The parking_id of a reported entry."""
        _, answer = await self._client.request("POST", "/v3/vehicle/parking/parkings", body)
        return str((answer or {})["id"])

    async def deduct(self, body: dict[str, Any]) -> str:
        """The platform's trade state of a deduction."""
        _, answer = await self._client.request("POST", "/v3/vehicle/transactions/parking", body)
        return str((answer or {}).get("trade_state", ""))
