"""The points service's settings (environment variables, validated at start)."""

from __future__ import annotations

from typing import Self

from kit.settings import ServiceSettings
from pydantic import Field, model_validator
from wechatpay.settings import MerchantSettings

from points.domain.expiry import POLICY_PATTERN


class Settings(ServiceSettings, MerchantSettings):
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

    # -- WeChat Pay points sync (积分同步): the merchant settings come from MerchantSettings. --
    #: Reports sent concurrently by one worker: each is a signed HTTPS call that mostly waits
    #: on the platform, so a batch of 20 could not keep up past ~250 payments/s.
    wechatpay_sync_batch_size: int = Field(default=100, ge=1, le=200)
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
    def _sync_retry_ordered(self) -> Self:
        if self.wechatpay_sync_retry_max_s < self.wechatpay_sync_retry_base_s:
            raise ValueError("WECHATPAY_SYNC_RETRY_MAX_S must be >= WECHATPAY_SYNC_RETRY_BASE_S")
        return self
