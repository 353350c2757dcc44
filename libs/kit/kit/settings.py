"""Settings from environment variables, validated once at start.

Each process builds one settings object in its composition root; a bad value stops the
process with a message naming the variable, instead of failing later on first use.
"""

from __future__ import annotations

import re
import sys
import typing
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretBytes, SecretStr, ValidationError
from pydantic_core import ErrorDetails
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
    #: Port of the admin APIs (directory writes, rules, ops calls without a credential),
    #: which then leave GRPC_PORT, so a network policy admitting the gateway there does not
    #: admit it to them; 0 keeps them on GRPC_PORT (dev, tests, ``make run``).
    admin_grpc_port: int = Field(default=0, ge=0, le=65535)
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    grpc_default_deadline_s: float = Field(default=10.0, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    #: The gRPC server closes each connection after this long (GOAWAY, calls in flight
    #: finish), so clients resolve the target again and spread onto replicas added since;
    #: 0 keeps connections open for good.
    grpc_max_connection_age_s: float = Field(default=300.0, ge=0)
    #: Replicas of the streams this process creates (3 on a production NATS cluster).
    jetstream_replicas: int = Field(default=1, ge=1, le=5)
    #: Port of the Prometheus /metrics endpoint; 0 leaves it off (tests, several local copies).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    #: /livez (on METRICS_PORT) fails once a loop that beats (a consumer, the outbox relay, a
    #: polling worker, a periodic job) has made no progress for this long beyond the wait it
    #: declared: stuck on one await, the process gets restarted.
    liveness_max_age_s: float = Field(default=120.0, gt=0)
    #: Messages a consumer fetches and commits in one transaction.
    consumer_batch_size: int = Field(default=200, ge=1, le=1000)
    #: How long JetStream waits for an ack before redelivering to another replica.
    consumer_ack_wait_s: float = Field(default=30.0, gt=0)
    #: After a partial batch, how long a consumer lets the next one gather (group commit
    #: under moderate load; an idle consumer still takes its next message at once).
    consumer_linger_s: float = Field(default=0.01, ge=0, le=1)
    #: The same for the outbox relay after it published a partial batch.
    outbox_linger_s: float = Field(default=0.005, ge=0, le=1)


_DSN_PASSWORD = re.compile(r"(://[^/:@\s]*):[^/@\s]*@")


def _is_secret(annotation: Any) -> bool:
    return annotation in (SecretStr, SecretBytes) or any(
        _is_secret(arg) for arg in typing.get_args(annotation)
    )


def _shown_input(cls: type[BaseSettings], err: ErrorDetails) -> str:
    """What the variable held, without leaking secrets: a missing field's ``input`` is the
    whole environment-derived dict, and secrets and DSN passwords never reach the log."""
    if err["type"] == "missing":
        return "not set"
    field = cls.model_fields.get(str(err["loc"][0])) if err["loc"] else None
    if field is not None and _is_secret(field.annotation):
        return "value hidden"
    return "got " + _DSN_PASSWORD.sub(r"\1:***@", repr(err.get("input")))


def load_settings(cls: type[S]) -> S:
    """Build settings or exit with one readable line per bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        lines = [f"invalid configuration for {cls.__name__}:"]
        for err in exc.errors():
            var = "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {var}: {err['msg']} ({_shown_input(cls, err)})")
        sys.stderr.write("\n".join(lines) + "\n")
        raise SystemExit(2) from None
