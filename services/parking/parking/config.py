"""The parking service's settings (environment variables, validated at start)."""

from __future__ import annotations

from typing import Self

from kit.settings import ServiceSettings
from pydantic import Field, FilePath, model_validator


class Settings(ServiceSettings):
    grpc_port: int = Field(default=50063, ge=0, le=65535)
    #: points' gRPC target for holds at the exit; empty turns paying with points off.
    points_grpc_target: str = "127.0.0.1:50062"
    #: How long a quote waits for points to hold; past it the quote goes without points.
    points_timeout_s: float = Field(default=1.0, gt=0, le=10)
    #: How often the relay role confirms/releases decided points holds and expires old quotes.
    holds_interval_s: float = Field(default=5.0, gt=0)
    #: How long a verified car-park credential is trusted without checking it again.
    credential_cache_s: float = Field(default=30.0, ge=0)
    #: How long a replica reuses a mall's policy and fee schedules before reading them again.
    config_cache_s: float = Field(default=5.0, ge=0, le=300)

    # -- WeChat Pay (parking state sync, pay-score parking). Unset API base: calls queue up. --
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
    wechatpay_platform_public_keys: dict[str, FilePath] = Field(default_factory=dict)
    wechatpay_timeout_s: float = Field(default=10.0, gt=0, le=60)
    #: How often the relay role's worker looks for due calls; retries back off from 1 s to this.
    wechatpay_poll_interval_s: float = Field(default=1.0, gt=0)
    wechatpay_retry_max_s: float = Field(default=600.0, gt=0)

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
