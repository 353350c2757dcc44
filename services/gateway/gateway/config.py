"""The gateway's settings (environment variables, validated at start)."""

from __future__ import annotations

from kit.settings import ServiceSettings
from pydantic import Field


class Settings(ServiceSettings):
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    member_grpc_target: str = "127.0.0.1:50061"
    points_grpc_target: str = "127.0.0.1:50062"
    #: How long a webhook waits for JetStream to acknowledge before answering "retry".
    publish_timeout_s: float = Field(default=5.0, gt=0)
