"""The gateway's settings (environment variables, validated at start)."""

from __future__ import annotations

from pathlib import Path

from kit.settings import ServiceSettings
from limits import parse
from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.adapters.merchants import load_merchants
from gateway.adapters.miniprogram import load_miniprogram_secrets


class Settings(ServiceSettings):
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    member_grpc_target: str = "127.0.0.1:50061"
    points_grpc_target: str = "127.0.0.1:50062"
    #: Empty: parking not connected (the card section answers not_connected, the plates
    #: and parking routes 503 upstream_unavailable).
    parking_grpc_target: str = ""
    #: Empty: coupons not connected (the card's section says so, coupon routes answer 503).
    coupons_grpc_target: str = ""
    #: Concurrent coupon claims sent to coupons as one ClaimCoupons call: at most this many
    #: per call, and at most this many calls in flight (see gateway.service_layer.claims).
    claim_batch_max: int = Field(default=500, ge=1, le=2000)
    claim_batch_workers: int = Field(default=4, ge=1, le=64)
    #: Seconds a stock known exhausted is answered sold_out from memory before coupons is
    #: asked again (0: never from memory).
    claim_sold_out_memory_s: float = Field(default=2.0, ge=0, le=60)
    #: Seconds a member's tier and tags are kept for claims on stocks with an audience (a
    #: tier change forgets them at once; 0: read on every such claim).
    claim_profile_ttl_s: float = Field(default=10.0, ge=0, le=300)
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

    #: Where code-to-session goes: WeChat's API in production, the simulator locally.
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_timeout_s: float = Field(default=5.0, gt=0, le=30)
    #: JSON ``{appid: AppSecret}`` of the mini-programs shoppers log in with. Unset: no
    #: mini-program API (no /v1/session, /v1/me).
    miniprogram_secrets_file: Path | None = None
    #: Signs the gateway's session tokens (HS256, at least 32 bytes); required with login.
    session_signing_key: SecretStr | None = None
    session_ttl_s: int = Field(default=7200, ge=60, le=86_400)
    refresh_ttl_s: int = Field(default=30 * 86_400, ge=300, le=90 * 86_400)
    #: Seconds between SSE heartbeats on /v1/me/events.
    sse_heartbeat_s: float = Field(default=15.0, gt=0, le=300)

    #: How long a member card is answered from memory when no change event came (the safety
    #: net; see gateway.service_layer.card), and when one of its sections failed.
    card_ttl_s: float = Field(default=5.0, ge=0, le=300)
    card_degraded_ttl_s: float = Field(default=1.0, ge=0, le=60)
    #: How long past its TTL a card is still answered while one fan-out refreshes it.
    card_stale_s: float = Field(default=30.0, ge=0, le=600)
    #: Background refreshes of stale cards running at once, at most.
    card_max_refreshing: int = Field(default=8, ge=1, le=1000)
    #: Each card section's deadline (one backend call).
    card_section_deadline_s: float = Field(default=0.3, gt=0, le=10)
    #: Rate limits per client address and per shopper ("<count>/<period>", e.g. "200/second");
    #: empty: off. Counted per replica.
    rate_limit_per_ip: str = "200/second"
    rate_limit_per_member: str = "20/second"
    #: Behind an ingress: the header it puts the client address in (e.g. X-Forwarded-For,
    #: whose last entry is used). Leave empty unless every request comes through it.
    rate_limit_client_header: str = ""
    #: Largest request body accepted (413 body_too_large above it).
    http_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024**2)

    @field_validator("rate_limit_per_ip", "rate_limit_per_member")
    @classmethod
    def _limit_parses(cls, value: str) -> str:
        if value:
            try:
                parse(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a rate limit like '200/second'") from None
        return value

    @field_validator("miniprogram_secrets_file")
    @classmethod
    def _secrets_load(cls, path: Path | None) -> Path | None:
        if path is not None:
            load_miniprogram_secrets(path)
        return path

    @model_validator(mode="after")
    def _login_needs_a_key(self) -> Settings:
        if self.miniprogram_secrets_file is None:
            return self
        if self.session_signing_key is None:
            raise ValueError("SESSION_SIGNING_KEY is required with MINIPROGRAM_SECRETS_FILE")
        if len(self.session_signing_key.get_secret_value().encode()) < 32:
            raise ValueError("SESSION_SIGNING_KEY must be at least 32 bytes")
        return self

    @field_validator("wechatpay_merchants_file")
    @classmethod
    def _merchants_load(cls, path: Path | None) -> Path | None:
        """Read it once at start, so a bad key stops the process with a clear line."""
        if path is not None:
            load_merchants(path)
        return path
