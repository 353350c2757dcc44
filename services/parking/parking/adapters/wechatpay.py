"""The WeChat Pay client parking uses, built from its settings (keys read from files), and
the platform's parking calls (state sync, pay-score parking) on top of its signed exchange."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from wechatpay.client import WeChatPayClient
from wechatpay.signing import load_private_key, load_public_key

from parking.config import Settings


def client_from_settings(settings: Settings) -> WeChatPayClient | None:
    """A client (not yet opened), or None when no platform is configured. Key files are read
    now: a wrong path or a malformed key stops the process at start."""
    if not settings.wechatpay_api_base:
        return None
    key_file = settings.wechatpay_merchant_private_key_file
    if key_file is None:  # the settings validator makes this unreachable
        raise ValueError("WECHATPAY_MERCHANT_PRIVATE_KEY_FILE is required")
    try:
        private_key = load_private_key(key_file.read_bytes())
    except ValueError as exc:
        raise ValueError(f"WECHATPAY_MERCHANT_PRIVATE_KEY_FILE {key_file}: {exc}") from exc
    platform_keys = {}
    for serial, path in settings.wechatpay_platform_public_keys.items():
        try:
            platform_keys[serial] = load_public_key(path.read_bytes())
        except ValueError as exc:
            raise ValueError(f"WECHATPAY_PLATFORM_PUBLIC_KEYS[{serial}] {path}: {exc}") from exc
    return WeChatPayClient(
        base_url=settings.wechatpay_api_base,
        mchid=settings.wechatpay_mchid,
        serial_no=settings.wechatpay_merchant_serial,
        private_key=private_key,
        platform_keys=platform_keys,
        timeout_s=settings.wechatpay_timeout_s,
    )


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
