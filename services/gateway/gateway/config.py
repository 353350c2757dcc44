"""The gateway's settings (environment variables, validated at start)."""

from __future__ import annotations

from pathlib import Path

from kit.settings import ServiceSettings
from pydantic import Field, field_validator

from gateway.adapters.merchants import load_merchants


class Settings(ServiceSettings):
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    member_grpc_target: str = "127.0.0.1:50061"
    points_grpc_target: str = "127.0.0.1:50062"
    #: How long a webhook waits for JetStream to acknowledge before answering "retry".
    publish_timeout_s: float = Field(default=5.0, gt=0)
    #: JSON file of the WeChat Pay merchants whose notifications this gateway opens (their
    #: APIv3 keys and platform public keys): see ``gateway.adapters.merchants``. Unset: no
    #: merchant, so every signed notification is refused as ``unknown_merchant``.
    wechatpay_merchants_file: Path | None = None
    #: Local demos only: also route the unsigned, plaintext ``POST /wechatpay/notifications``.
    wechatpay_accept_unsigned: bool = False
    #: How far a notification's Wechatpay-Timestamp may be from now, either way.
    wechatpay_max_skew_s: float = Field(default=300.0, gt=0, le=3600)
    #: Replicas of the GATEWAY_NOTIFICATIONS key-value bucket (3 on a production cluster).
    wechatpay_replay_replicas: int = Field(default=1, ge=1, le=5)

    @field_validator("wechatpay_merchants_file")
    @classmethod
    def _merchants_load(cls, path: Path | None) -> Path | None:
        """Read it once at start, so a bad key stops the process with a clear line."""
        if path is not None:
            load_merchants(path)
        return path
