"""The member service's settings (environment variables, validated at start)."""

from __future__ import annotations

from kit.settings import ServiceSettings
from pydantic import Field


class Settings(ServiceSettings):
    grpc_port: int = Field(default=50061, ge=0, le=65535)
    consumer_batch_size: int = Field(default=200, ge=1, le=1000)
    consumer_ack_wait_s: float = Field(default=30.0, gt=0)
