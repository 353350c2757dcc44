"""Settings of the coupon expiry job (read from the environment next to ``Settings``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ExpirySettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    #: How often the relay role's expiry job expires due coupons and sends reminders.
    coupon_expiry_interval_s: float = Field(default=300.0, gt=0)
    #: Days before a coupon expires that coupons.coupon.expiring goes out for it (once).
    coupon_expiry_reminder_days: int = Field(default=3, ge=1, le=365)
