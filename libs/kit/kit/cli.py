"""The one command line every service shares: ``python -m <service> <command>``.

``migrate`` applies SQL migrations; ``serve``, ``relay``, ``consume`` run one role each (one
Deployment per role in production if wanted); ``all`` runs every role in one process (local
runs, small malls). Services add their own ops commands (dead letters, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import uvloop

from kit.grpc_server import GrpcServer
from kit.lifecycle import Component, run_components
from kit.liveness import ProbeServer
from kit.logs import configure_logging, get_logger
from kit.migrations import migrate
from kit.settings import ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)
ROLES = ("serve", "relay", "consume")
Command = Callable[[Sequence[str]], Awaitable[int]]


@dataclass
class Roles:
    """What a service's composition root hands to the runner."""

    components: dict[str, list[Component]]
    commands: dict[str, Command] = field(default_factory=dict)
    #: The gRPC server, when the service has one (tests read its bound port).
    grpc: GrpcServer | None = None
    #: Anything else a test or supervisor may need to reach (the gateway's HTTP server).
    http: Any = None

    def select(self, roles: Sequence[str]) -> list[Component]:
        return [c for role in roles for c in self.components.get(role, [])]


Bootstrap = Callable[[S], contextlib.AbstractAsyncContextManager[Roles]]


@dataclass
class Service(Generic[S]):
    name: str
    settings_cls: type[S]
    bootstrap: Bootstrap[S]
    migrations: list[tuple[str, Path]]

    def main(self, argv: Sequence[str] | None = None) -> None:
        parser = argparse.ArgumentParser(prog=f"python -m {self.name}")
        parser.add_argument("command", help=f"migrate | {' | '.join(ROLES)} | all | an ops command")
        parser.add_argument("args", nargs="*")
        ns = parser.parse_args(argv)
        settings = load_settings(self.settings_cls)
        configure_logging(self.name, level=settings.log_level, fmt=settings.log_format)
        code = uvloop.run(self._dispatch(settings, ns.command, ns.args))
        sys.exit(code)

    async def _dispatch(self, settings: S, command: str, args: Sequence[str]) -> int:
        log = get_logger(self.name)
        if command == "migrate":
            applied = await migrate(settings.database_url, self.migrations)
            log.info("migrated", applied=len(applied))
            return 0
        async with self.bootstrap(settings) as roles:
            if command in (*ROLES, "all"):
                selected = ROLES if command == "all" else (command,)
                components = roles.select(selected)
                if settings.metrics_port:  # /metrics and /livez, answered by this loop
                    probes = ProbeServer(
                        settings.metrics_port, max_age_s=settings.liveness_max_age_s
                    )
                    components = [*components, probes.run]
                # What exists now (modules, types, functions, pools, clients) lives as long as
                # the process: keep it out of the collector's full passes, which otherwise walk
                # it all each time (40-130 ms pauses under load, a few ms once frozen).
                gc.freeze()
                log.info("starting", roles=list(selected))
                await run_components(components)
                return 0
            if command in roles.commands:
                return await roles.commands[command](args)
        log.error(
            "unknown_command", command=command, known=["migrate", *ROLES, "all", *roles.commands]
        )
        return 2


@contextlib.asynccontextmanager
async def running(roles: Roles, selected: Sequence[str] = ROLES) -> AsyncIterator[asyncio.Event]:
    """Run roles in the background (tests, the local supervisor); stop them on exit."""
    stop = asyncio.Event()

    async def all_of() -> None:
        async with asyncio.TaskGroup() as tg:
            for component in roles.select(selected):
                tg.create_task(component(stop))

    task = asyncio.create_task(all_of())
    try:
        yield stop
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def serving(
    roles: Roles, selected: Sequence[str] = ("serve",), *, timeout_s: float = 10.0
) -> AsyncIterator[str]:
    """Like ``running``, and yield the gRPC target once the server has bound its port
    (tests and tools start services on port 0)."""
    server = roles.grpc
    if server is None:
        raise ValueError("this service has no gRPC server")
    async with running(roles, selected):
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not server.port:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("the gRPC server never bound a port")
            await asyncio.sleep(0.01)
        yield f"127.0.0.1:{server.port}"
