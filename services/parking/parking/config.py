"""The parking service's settings (environment variables, validated at start)."""

from __future__ import annotations

from kit.settings import ServiceSettings
from pydantic import Field
from wechatpay.settings import MerchantSettings


class Settings(ServiceSettings, MerchantSettings):
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
    #: How long after a member settles before leaving the exit gate lets the car out without
    #: payment; time parked after it is charged.
    prepaid_grace_minutes: int = Field(default=15, ge=1, le=120)

    # -- WeChat Pay (parking state sync, pay-score parking): merchant settings come from
    # MerchantSettings; unset API base: calls queue up. --
    #: How often the relay role's worker looks for due calls; retries back off from 1 s to this.
    wechatpay_poll_interval_s: float = Field(default=1.0, gt=0)
    wechatpay_retry_max_s: float = Field(default=600.0, gt=0)
