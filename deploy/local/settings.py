"""What ``make run`` reads from its environment (documented at the top of run.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Backend:
    """A service with its own database and gRPC API, run with ``python -m <name> all``."""

    name: str
    grpc_port: int

    @property
    def port_variable(self) -> str:
        return f"{self.name.upper()}_GRPC_PORT"


#: Every backend service. Each one gets a database named after it (created if missing,
#: migrated with ``python -m <name> migrate``), runs under supervisord, and is handed to the
#: gateway as ``<NAME>_GRPC_TARGET``. A new service joins by adding its line here.
BACKENDS: tuple[Backend, ...] = (
    Backend("member", 50061),
    Backend("points", 50062),
    Backend("parking", 50063),
    Backend("coupons", 50064),
)
GATEWAY = "gateway"
GATEWAY_PORT = 8080
#: The WeChat Pay simulator stands in for the platform: it sends signed notifications to the
#: gateway and receives the points service's signed points sync.
SIMULATOR = "wechatpay-simulator"
SIMULATOR_PORT = 8090
DEMO_MCHID = "1900000109"


class SettingsError(ValueError):
    """A variable has a value we cannot use; the message names it."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a port number, got {raw!r}") from None
    if not 0 < value < 65536:
        raise SettingsError(f"{name} must be between 1 and 65535, got {value}")
    return value


@dataclass(frozen=True)
class RunSettings:
    run_dir: Path
    #: Server admin URLs given by the user; None means "start an embedded one".
    database_url: str | None
    nats_url: str | None
    postgres_port: int | None
    nats_port: int | None
    gateway_port: int
    simulator_port: int
    grpc_ports: Mapping[str, int]
    log_level: str
    ready_timeout_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str], repo: Path) -> RunSettings:
        run_dir = Path(env.get("MALL_RUN_DIR") or repo / ".run")
        free = env.get("MALL_FREE_PORTS", "").lower() in ("1", "true", "yes")

        def port(variable: str, default: int) -> int:
            return _port(env, variable, None) or (_free_port() if free else default)

        grpc_ports = {b.name: port(b.port_variable, b.grpc_port) for b in BACKENDS}
        gateway_port = port("GATEWAY_PORT", GATEWAY_PORT)
        simulator_port = port("SIMULATOR_PORT", SIMULATOR_PORT)
        try:
            ready_timeout_s = float(env.get("MALL_READY_TIMEOUT_S") or 60)
        except ValueError:
            raise SettingsError("MALL_READY_TIMEOUT_S must be a number of seconds") from None
        log_level = (env.get("LOG_LEVEL") or "info").lower()
        if log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"LOG_LEVEL must be debug|info|warning|error, got {log_level!r}")
        return cls(
            run_dir=Path(os.path.abspath(run_dir)),
            database_url=env.get("DATABASE_URL") or None,
            nats_url=env.get("NATS_URL") or None,
            postgres_port=_port(env, "EMBEDDED_POSTGRES_PORT", None),
            nats_port=_port(env, "EMBEDDED_NATS_PORT", None),
            gateway_port=gateway_port,
            simulator_port=simulator_port,
            grpc_ports=grpc_ports,
            log_level=log_level,
            ready_timeout_s=ready_timeout_s,
        )

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"

    @property
    def simulator_url(self) -> str:
        return f"http://{HOST}:{self.simulator_port}"

    @property
    def wechatpay_dir(self) -> Path:
        """Keys the simulator generated once and the services are configured from."""
        return self.run_dir / "wechatpay"

    def grpc_target(self, service: str) -> str:
        return f"{HOST}:{self.grpc_ports[service]}"

    def listen_ports(self) -> dict[str, int]:
        """Port by the variable that sets it: the ones our children must be able to bind."""
        ports = {b.port_variable: self.grpc_ports[b.name] for b in BACKENDS}
        ports["GATEWAY_PORT"] = self.gateway_port
        ports["SIMULATOR_PORT"] = self.simulator_port
        return ports
