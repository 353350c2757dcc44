"""The coupons service's settings (environment variables, validated at start)."""

from __future__ import annotations

from kit.settings import ServiceSettings
from pydantic import Field


class Settings(ServiceSettings):
    grpc_port: int = Field(default=50064, ge=0, le=65535)
    #: Redemptions answered together (group commit): at most this many per batch ...
    redemption_batch_max: int = Field(default=100, ge=1, le=1000)
    #: ... and at most this many batches in flight at once.
    redemption_batch_workers: int = Field(default=2, ge=1, le=64)
    #: Seconds a stock known sold out is answered "sold out" from memory before the database
    #: is asked again (another replica or ops may have changed it).
    sold_out_memory_s: float = Field(default=5.0, ge=0, le=300)
