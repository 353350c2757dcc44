"""supervisord for the local stack: its config, its start, its answers, its stop.

supervisord runs in the foreground as our child (``supervisord -n``), in its own session so
that Ctrl-C reaches only run.py, which then stops it in order; a parent-death signal stops it
if run.py is killed outright.  It restarts crashed services and reports them on the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import secrets
import shlex
import shutil
import signal
import sys
import xmlrpc.client
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped]

TEMPLATE = Path(__file__).with_name("supervisord.conf.template")
#: Seconds a service gets between SIGTERM and SIGKILL (its own drain grace is shorter).
STOP_WAIT_S = 10
CHILD_GRACE_S = 5
_SOCKET_PATH_MAX = 100  # AF_UNIX paths stop at 107 bytes

PROGRAM = Template("""\
[program:${name}]
command=${command}
directory=${directory}
environment=${environment}
priority=${priority}
autostart=true
autorestart=true
startsecs=1
startretries=3
stopsignal=TERM
stopwaitsecs=${stop_wait}
killasgroup=true
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
redirect_stderr=true
""")


@dataclass(frozen=True)
class Program:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    priority: int


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str  # STARTING, RUNNING, BACKOFF, FATAL, EXITED, STOPPED, ...
    pid: int
    description: str


def _escape(value: str) -> str:
    """supervisord expands ``%(name)s`` in every value: a literal percent is ``%%``."""
    return value.replace("%", "%%")


def _environment(env: Mapping[str, str]) -> str:
    # supervisord splits KEY="value",... with a non-POSIX shlex: no escapes inside quotes.
    pairs = []
    for key, value in env.items():
        if any(c in value for c in "\"'\r\n"):
            raise ValueError(f"{key}: quotes and newlines cannot pass through supervisord")
        pairs.append(f'{key}="{_escape(value)}"')
    return ",".join(pairs)


def socket_path(run_dir: Path) -> Path:
    path = run_dir / "supervisor.sock"
    if len(str(path)) <= _SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"mall-run-{digest}.sock"  # noqa: S108 - a socket, 0700 by config


def render(run_dir: Path, programs: Sequence[Program], directory: Path, *, password: str) -> str:
    conf = run_dir / "supervisord.conf"
    stanzas = [
        PROGRAM.substitute(
            name=p.name,
            command=_escape(shlex.join(p.argv)),
            directory=_escape(str(directory)),
            environment=_environment(p.env),
            priority=p.priority,
            stop_wait=STOP_WAIT_S,
        )
        for p in programs
    ]
    return Template(TEMPLATE.read_text()).substitute(
        conf=_escape(str(conf)),
        user=pwd.getpwuid(os.geteuid()).pw_name,
        run_dir=_escape(str(run_dir)),
        socket=_escape(str(socket_path(run_dir))),
        password=password,
        programs="\n".join(stanzas),
    )


@dataclass(frozen=True)
class Conf:
    path: Path
    socket: Path
    password: str


def write_conf(run_dir: Path, programs: Sequence[Program], directory: Path) -> Conf:
    """Write ``<run_dir>/supervisord.conf`` (0600: it holds passwords)."""
    (run_dir / "logs").mkdir(exist_ok=True)
    conf = Conf(run_dir / "supervisord.conf", socket_path(run_dir), secrets.token_urlsafe(16))
    fd = os.open(conf.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(render(run_dir, programs, directory, password=conf.password))
    conf.path.chmod(0o600)  # an older file keeps its mode through O_TRUNC
    return conf


class Supervisord:
    """A running ``supervisord -n``."""

    def __init__(self, proc: asyncio.subprocess.Process, conf: Conf, programs: int) -> None:
        self.proc = proc
        self.conf = conf
        self._programs = programs
        self._pids: dict[str, int] = {}

    @classmethod
    async def start(cls, conf: Conf, programs: int, env: Mapping[str, str]) -> Supervisord:
        argv = [str(Path(sys.executable).with_name("supervisord")), "-n", "-c", str(conf.path)]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:  # it execs: the pid we hold is supervisord's
            argv = [setpriv, "--pdeathsig=TERM", "--", *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        return cls(proc, conf, programs)

    @property
    def exited(self) -> bool:
        return self.proc.returncode is not None

    def _processes(self) -> list[ProcessInfo]:
        transport = SupervisorTransport("mall", self.conf.password, f"unix://{self.conf.socket}")
        with xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport) as proxy:
            infos: list[dict[str, Any]] = proxy.supervisor.getAllProcessInfo()  # type: ignore[assignment]
        return [
            ProcessInfo(str(i["name"]), str(i["statename"]), int(i["pid"]), str(i["description"]))
            for i in infos
        ]

    async def processes(self) -> list[ProcessInfo]:
        """What supervisord says about its programs ([] while it is still starting)."""
        try:
            found = await asyncio.to_thread(self._processes)
        except (OSError, xmlrpc.client.Error):
            return []
        self._pids = {p.name: p.pid for p in found if p.pid}
        return found

    async def stop(self) -> None:
        """SIGTERM: supervisord stops the services (highest priority first) and exits."""
        if self.exited:
            return
        await self.processes()  # today's pids, in case it must be killed outright
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=STOP_WAIT_S * self._programs + 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            for pid in self._pids.values():  # its services are ours to clean up now
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
