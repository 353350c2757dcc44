"""Settings from environment variables, validated once at start.

Each process builds one settings object in its composition root; a bad value stops the
process with a message naming the variable, instead of failing later on first use.
"""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)


class ServiceSettings(BaseSettings):
    """What every Mall Circle process reads from its environment."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        pattern=r"^postgres(ql)?://",
        description="asyncpg DSN of this service's own database",
    )
    nats_url: str = Field(default="nats://127.0.0.1:4222", pattern=r"^(nats|tls)://")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    grpc_default_deadline_s: float = Field(default=10.0, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)


def load_settings(cls: type[S]) -> S:
    """Build settings or exit with one readable line per bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        lines = [f"invalid configuration for {cls.__name__}:"]
        for err in exc.errors():
            var = "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {var}: {err['msg']} (got {err.get('input')!r})")
        sys.stderr.write("\n".join(lines) + "\n")
        raise SystemExit(2) from None
