"""The merchant's WeChat Pay settings, shared by every service that calls the platform
(points' points sync, parking's pay-score and state sync, coupons' merchant coupons and
clawbacks), and the client built from them.

Mixed into a service's pydantic settings: ``class Settings(ServiceSettings, MerchantSettings)``.
Unset ``WECHATPAY_API_BASE`` means "no platform": calls queue up, none is sent.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field, FilePath, model_validator

from wechatpay.client import WeChatPayClient
from wechatpay.signing import load_private_key, load_public_key


class MerchantSettings(BaseModel):
    wechatpay_api_base: str = Field(
        default="",
        pattern=r"^(https?://[^?#]+)?$",
        description="platform API origin, e.g. https://api.mch.weixin.qq.com",
    )
    wechatpay_mchid: str = ""
    #: Serial of the merchant API certificate whose private key signs requests.
    wechatpay_merchant_serial: str = ""
    wechatpay_merchant_private_key_file: FilePath | None = None
    #: JSON object: platform certificate serial or public key id (PUB_KEY_ID_…) → PEM file.
    #: Several at once while the platform rotates its keys.
    wechatpay_platform_public_keys: dict[str, FilePath] = Field(default_factory=dict)
    wechatpay_timeout_s: float = Field(default=10.0, gt=0, le=60)

    @model_validator(mode="after")
    def _wechatpay_complete(self) -> Self:
        if not self.wechatpay_api_base:
            return self
        missing = [
            name.upper()
            for name in (
                "wechatpay_mchid",
                "wechatpay_merchant_serial",
                "wechatpay_merchant_private_key_file",
                "wechatpay_platform_public_keys",
            )
            if not getattr(self, name)
        ]
        if missing:
            raise ValueError(f"WECHATPAY_API_BASE is set, so {', '.join(missing)} must be too")
        return self

    def wechatpay_client(self) -> WeChatPayClient | None:
        """A client (not yet opened), or None when no platform is configured.

        Key files are read and parsed here, at start: a wrong path or a malformed key stops the
        process now instead of failing every call later.
        """
        if not self.wechatpay_api_base:
            return None
        key_file = self.wechatpay_merchant_private_key_file
        if key_file is None:  # the validator makes this unreachable
            raise ValueError("WECHATPAY_MERCHANT_PRIVATE_KEY_FILE is required")
        try:
            private_key = load_private_key(key_file.read_bytes())
        except ValueError as exc:
            raise ValueError(f"WECHATPAY_MERCHANT_PRIVATE_KEY_FILE {key_file}: {exc}") from exc
        platform_keys = {}
        for serial, path in self.wechatpay_platform_public_keys.items():
            try:
                platform_keys[serial] = load_public_key(path.read_bytes())
            except ValueError as exc:
                raise ValueError(f"WECHATPAY_PLATFORM_PUBLIC_KEYS[{serial}] {path}: {exc}") from exc
        return WeChatPayClient(
            base_url=self.wechatpay_api_base,
            mchid=self.wechatpay_mchid,
            serial_no=self.wechatpay_merchant_serial,
            private_key=private_key,
            platform_keys=platform_keys,
            timeout_s=self.wechatpay_timeout_s,
        )
