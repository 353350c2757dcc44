"""The member service's settings (environment variables, validated at start)."""

from __future__ import annotations

from kit.settings import ServiceSettings
from pydantic import Field


class Settings(ServiceSettings):
    grpc_port: int = Field(default=50061, ge=0, le=65535)
    #: How long a checkout code (会员识别) stays valid after it is issued.
    checkout_code_ttl_s: float = Field(default=60.0, gt=0, le=600)
    #: How long a replica trusts a verified tenant credential without looking again: the most
    #: a revoked credential keeps working.
    credential_cache_s: float = Field(default=30.0, ge=0, le=300)
    #: How far in the future a POS may date a reported payment (till clock skew).
    pos_clock_skew_s: float = Field(default=300.0, ge=0, le=3600)
    #: How often the relay role re-evaluates tag rules (tags whose window ran out come off).
    tag_rules_interval_s: float = Field(default=3600.0, gt=0)
