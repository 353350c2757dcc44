"""The coupons service's settings (environment variables, validated at start)."""

from __future__ import annotations

from kit.settings import ServiceSettings
from pydantic import Field


class Settings(ServiceSettings):
    grpc_port: int = Field(default=50064, ge=0, le=65535)
