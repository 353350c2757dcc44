"""The platform's merchant-coupon (商家券) calls the card package mirror makes, over the signed
WeChat Pay client (which must be open: ``async with client``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from wechatpay.client import PlatformUnavailable, WeChatPayClient, rfc3339

API = "/v3/marketing/busifavor"


class MerchantCoupons(Protocol):
    async def create_stock(self, request: dict[str, Any]) -> str: ...

    async def send(
        self, *, stock_id: str, appid: str, openid: str, coupon_code: str, out_request_no: str
    ) -> None: ...

    async def use(
        self,
        *,
        stock_id: str,
        appid: str,
        openid: str,
        coupon_code: str,
        use_request_no: str,
        use_time: datetime,
    ) -> None: ...

    async def deactivate(
        self, *, stock_id: str, coupon_code: str, deactivate_request_no: str, reason: str
    ) -> None: ...

    async def return_coupon(
        self, *, stock_id: str, coupon_code: str, return_request_no: str
    ) -> None: ...


class WeChatMerchantCoupons:
    def __init__(self, client: WeChatPayClient) -> None:
        self._client = client

    async def create_stock(self, request: dict[str, Any]) -> str:
        _, answer = await self._client.request("POST", f"{API}/stocks", request)
        if not isinstance(answer, dict) or not answer.get("stock_id"):
            raise PlatformUnavailable("create stock answered without a stock_id")
        return str(answer["stock_id"])

    async def send(
        self, *, stock_id: str, appid: str, openid: str, coupon_code: str, out_request_no: str
    ) -> None:
        body = {
            "stock_id": stock_id,
            "appid": appid,
            "openid": openid,
            "coupon_code": coupon_code,
            "out_request_no": out_request_no,
        }
        await self._client.request("POST", f"{API}/coupons/send", body)

    async def use(
        self,
        *,
        stock_id: str,
        appid: str,
        openid: str,
        coupon_code: str,
        use_request_no: str,
        use_time: datetime,
    ) -> None:
        body = {
            "coupon_code": coupon_code,
            "stock_id": stock_id,
            "appid": appid,
            "openid": openid,
            "use_time": rfc3339(use_time),
            "use_request_no": use_request_no,
        }
        await self._client.request("POST", f"{API}/coupons/use", body)

    async def deactivate(
        self, *, stock_id: str, coupon_code: str, deactivate_request_no: str, reason: str
    ) -> None:
        body = {
            "coupon_code": coupon_code,
            "stock_id": stock_id,
            "deactivate_request_no": deactivate_request_no,
            "deactivate_reason": reason,
        }
        await self._client.request("POST", f"{API}/coupons/deactivate", body)

    async def return_coupon(
        self, *, stock_id: str, coupon_code: str, return_request_no: str
    ) -> None:
        body = {
            "coupon_code": coupon_code,
            "stock_id": stock_id,
            "return_request_no": return_request_no,
        }
        await self._client.request("POST", f"{API}/coupons/return", body)
