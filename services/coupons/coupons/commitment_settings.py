"""Settings of commitment cards and the WeChat Pay calls they (and the card package) make.

Read from the environment next to the service's own ``Settings``; kept apart so the coupons
core's settings stay its own. Unset ``WECHATPAY_API_BASE``: clawbacks queue up, none is sent.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from wechatpay.settings import MerchantSettings


class CommitmentSettings(BaseSettings, MerchantSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    #: How often the relay role's sweep fails cards past their deadline and sends reminders.
    commitment_sweep_interval_s: float = Field(default=60.0, gt=0)
    #: Hours before its deadline that an unfulfilled card's holder is reminded (once).
    commitment_reminder_hours: int = Field(default=48, ge=1, le=24 * 30)
    #: Seconds after its deadline that an unfulfilled card fails, so a payment made before the
    #: deadline that reaches coupons a little later still counts.
    commitment_settle_grace_s: float = Field(default=1800.0, ge=0, le=86_400)

    #: The mall's pay-score service id (支付分服务 ID) clawbacks are deducted under.
    payscore_service_id: str = "commitment-card"
    #: Where the platform would notify deduction results (required by the API, unused here).
    payscore_notify_url: str = "https://mall.example.com/wechatpay/payscore"
    clawback_retry_base_s: float = Field(default=5.0, gt=0)
    clawback_retry_max_s: float = Field(default=3600.0, gt=0)
    clawback_poll_interval_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _clawback_retry_ordered(self) -> Self:
        if self.clawback_retry_max_s < self.clawback_retry_base_s:
            raise ValueError("CLAWBACK_RETRY_MAX_S must be >= CLAWBACK_RETRY_BASE_S")
        return self
