"""The points service's settings (environment variables, validated at start)."""

from __future__ import annotations

from typing import Self

from kit.settings import ServiceSettings
from pydantic import Field, FilePath, model_validator

from points.domain.expiry import POLICY_PATTERN


class Settings(ServiceSettings):
    grpc_port: int = Field(default=50062, ge=0, le=65535)
    #: How long a redemption hold reserves points unless confirmed or released.
    hold_ttl_s: float = Field(default=900.0, gt=0, le=86_400)
    #: When a lot of points expires: 'end_of_next_year' (earned in 2025: gone when 2026 ends,
    #: Asia/Shanghai) or 'days:N' (N days after the payment).
    points_expiry_policy: str = Field(default="end_of_next_year", pattern=POLICY_PATTERN)
    #: How often the relay role's expiry job looks for due lots.
    expiry_interval_s: float = Field(default=3600.0, gt=0)
    #: Days before a lot expires that the expiry job publishes points.points.expiring for it.
    expiry_reminder_days: int = Field(default=30, ge=1, le=3650)

    # -- WeChat Pay points sync (积分同步). Unset API base: reports queue up, none is sent. ---
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
    wechatpay_sync_batch_size: int = Field(default=20, ge=1, le=200)
    wechatpay_sync_retry_base_s: float = Field(default=1.0, gt=0)
    wechatpay_sync_retry_max_s: float = Field(default=600.0, gt=0)
    wechatpay_sync_poll_interval_s: float = Field(default=1.0, gt=0)
    #: How long a worker holds the reports it claimed (at least twice the send timeout): what
    #: a report waits after its worker died mid-send before another worker takes it.
    wechatpay_sync_lease_s: float = Field(default=60.0, gt=0)
    #: The platform's record of notified payments for reconciliation (the simulator's
    #: /control/bill); unset: reconciliation says the platform side was not consulted.
    wechatpay_bill_url: str = Field(default="", pattern=r"^(https?://[^?#]+)?$")

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
        if self.wechatpay_sync_retry_max_s < self.wechatpay_sync_retry_base_s:
            raise ValueError("WECHATPAY_SYNC_RETRY_MAX_S must be >= WECHATPAY_SYNC_RETRY_BASE_S")
        return self
