"""The ground under the services: run dir, PostgreSQL and NATS, one database per service."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from mall_testing.embedded import EmbeddedNats, EmbeddedPostgres

from deploy.local.settings import HOST, RunSettings


class StackError(RuntimeError):
    """The stack cannot start or keep running; the message says why (and what to do)."""


def prepare_run_dir(settings: RunSettings) -> None:
    """Create the run dir (mode 0755: the embedded PostgreSQL runs as ``nobody`` and must
    traverse it) and check, when we are root, that ``nobody`` can reach it at all."""
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o755)
    if settings.database_url is not None or os.geteuid() != 0:
        return
    for parent in run_dir.parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            raise StackError(
                f"the embedded PostgreSQL runs as 'nobody', which cannot enter {parent}: "
                f"`chmod o+x {parent}`, or point MALL_RUN_DIR somewhere under /tmp"
            )


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """One ``make run`` per run dir: a second one would fight over data and ports."""
    path = run_dir / "run.lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise StackError(
                f"another `make run` (pid {holder}) is using {run_dir}; stop it, or set "
                "MALL_RUN_DIR to another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


def check_ports_free(ports: Mapping[str, int]) -> None:
    """Fail now, naming the variable, rather than watching a child crash-loop on a bind."""
    for variable, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers do: a listener blocks us, connections in TIME_WAIT do not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise StackError(
                    f"port {port} on {HOST} is taken; free it or set {variable}"
                ) from None


def start_servers(settings: RunSettings, stack: contextlib.ExitStack) -> tuple[str, str]:
    """PostgreSQL admin URL and NATS URL: the user's, or embedded servers kept in the run dir.

    Call from the main thread: the embedded servers die with the thread that started them.
    """
    nats_url = settings.nats_url
    postgres_url = settings.database_url
    try:
        if nats_url is None:
            nats = EmbeddedNats(settings.run_dir / "nats", port=settings.nats_port)
            nats_url = stack.enter_context(nats).url
        if postgres_url is None:
            postgres = EmbeddedPostgres(settings.run_dir / "postgres", port=settings.postgres_port)
            postgres_url = stack.enter_context(postgres).url
    except RuntimeError as exc:  # the message carries the server's last log lines
        raise StackError(str(exc)) from exc
    return postgres_url, nats_url


def database_url(server_url: str, database: str) -> str:
    """``server_url`` with its database (the URL path) replaced by ``database``."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}"))


async def ensure_database(server_url: str, name: str) -> str:
    """Create database ``name`` on that server unless it exists; return its URL."""
    conn = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT true FROM pg_database WHERE datname = $1", name)
        if not exists:
            ident = '"' + name.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f"CREATE DATABASE {ident}")
    finally:
        await conn.close()
    return database_url(server_url, name)


async def run_child(
    argv: list[str], env: Mapping[str, str], *, stdout: IO[bytes] | int | None = None
) -> int:
    """Run a child in its own session (Ctrl-C is ours to handle); kill it if cancelled."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        return await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def migrate(service: str, url: str, env: Mapping[str, str]) -> None:
    code = await run_child([sys.executable, "-m", service, "migrate"], {**env, "DATABASE_URL": url})
    if code != 0:
        raise StackError(f"`python -m {service} migrate` failed with exit code {code}")


async def prepare_databases(
    server_url: str, services: list[str], env: Mapping[str, str]
) -> dict[str, str]:
    """One database per service, created if missing and migrated; URL by service."""
    creating = asyncio.Lock()  # CREATE DATABASE copies template1: one at a time

    async def prepare(name: str) -> str:
        async with creating:
            url = await ensure_database(server_url, name)
        await migrate(name, url, env)  # meanwhile the next database is created
        return url

    tasks = {name: asyncio.create_task(prepare(name)) for name in services}
    try:
        await asyncio.gather(*tasks.values())
    finally:  # one failed, or we are stopping: the others' children are killed too
        for task in tasks.values():
            if not task.cancelling():  # a second cancel would cut their cleanup short
                task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return {name: task.result() for name, task in tasks.items()}
