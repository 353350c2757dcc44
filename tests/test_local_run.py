"""`make run` as a developer uses it: deploy/local/run.py in a subprocess, on its own run dir
and free ports (MALL_FREE_PORTS), driven with the very commands its banner prints."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mall_testing.demo import DemoMall, payment_notification

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "deploy" / "local" / "run.py"
SUPERVISORCTL = Path(sys.executable).with_name("supervisorctl")
READY = re.compile(r"Mall Circle is ready in [0-9.]+ s")
BANNER_END = "Ctrl-C stops everything."
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Banner:
    ready_line: str  # "Mall Circle is ready in N s (phases)"
    payment_curl: list[str]
    simulator_payment_curl: list[str]  # through the WeChat Pay simulator, signed + encrypted
    simulator_syncs_curl: list[str]
    login_step: str  # the banner's wx.login step, naming the demo mall's appid
    cars: dict[str, Any]  # the car-park simulator's summary of the demo car park's first wave

    @property
    def gateway_url(self) -> str:
        return curl_url(self.payment_curl).removesuffix("/wechatpay/notifications")

    @property
    def simulator_url(self) -> str:
        return curl_url(self.simulator_syncs_curl).removesuffix("/control/points-syncs")

    @property
    def appid(self) -> str:
        found = re.search(r'"appid": "([^"]+)"', self.login_step)
        assert found, self.login_step
        return found[1]


class LocalRun:
    """run.py in a subprocess; a thread drains its console (kept to explain failures)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        # Embedded servers, and no port of a developer's own `make run`.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "NATS_URL") and not k.endswith("_PORT")
        }
        env |= {"MALL_RUN_DIR": str(run_dir), "MALL_FREE_PORTS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(RUN_PY)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next_line(self, deadline: float) -> str:
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"run.py said nothing more in time:\n{self.tail()}") from None
        if line is None:
            code = self.proc.wait()
            raise AssertionError(f"run.py ended (code {code}) too early:\n{self.tail()}")
        self.output.append(line)
        return line

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output[-lines:])

    def wait_banner(self) -> Banner:
        deadline = time.monotonic() + START_TIMEOUT_S
        ready_line = ""
        while not READY.search(ready_line):
            ready_line = self._next_line(deadline)
        curls, login, cars = [], "", {}
        while (line := self._next_line(deadline)) != BANNER_END:
            if line.startswith("  car park ") and " drove " in line:
                cars = json.loads(line.split(" drove ", 1)[1])
            elif line.startswith("  curl "):
                curls.append(shlex.split(line))
            elif line.startswith("  CODE=") and not login:
                login = line

        def find(path: str) -> list[str]:
            return next(c for c in curls if curl_url(c).endswith(path))

        return Banner(
            ready_line,
            find("/wechatpay/notifications"),
            find("/control/payments"),
            find("/control/points-syncs"),
            login,
            cars,
        )

    def drain(self) -> None:
        """Move what the reader thread has collected so far into ``output``."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.output.append(line)

    def supervisorctl(self, *args: str) -> str:
        conf = self.run_dir / "supervisord.conf"
        result = subprocess.run(
            [str(SUPERVISORCTL), "-c", str(conf), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.stdout.strip()

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"run.py did not stop after {sig.name}:\n{self.tail()}") from None
        self._reader.join(timeout=10)
        self.drain()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - our URL
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - our URL
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def curl_url(argv: list[str]) -> str:
    return next(arg for arg in argv if arg.startswith("http://"))


def post_payment(url: str, body: str) -> None:
    status, answer = http("POST", url, body.encode())
    assert status == 204, answer


def shopper_points(banner: Banner, openid: str) -> tuple[int, Any]:
    """What the shopper's mini-program sees: wx.login at the simulator, a session from the
    gateway, then their own points (the banner's three steps, in Python)."""
    status, raw = http(
        "POST",
        f"{banner.simulator_url}/control/login-codes",
        json.dumps({"appid": banner.appid, "openid": openid}).encode(),
    )
    assert status == 200, raw
    code = json.loads(raw)["code"]
    status, raw = http(
        "POST",
        f"{banner.gateway_url}/v1/session",
        json.dumps({"appid": banner.appid, "code": code}).encode(),
    )
    assert status == 200, raw
    token = json.loads(raw)["access_token"]
    request = urllib.request.Request(  # noqa: S310 - our own URL
        f"{banner.gateway_url}/v1/me/points", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - our URL
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:200]


def wait_balance(
    banner: Banner, openid: str, balance: int, timeout_s: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        status, body = shopper_points(banner, openid)
        last = (status, body)
        if status == 200 and body.get("balance") == balance:
            result: dict[str, Any] = body
            return result
        time.sleep(0.2)
    raise AssertionError(f"balance never reached {balance}; last answer {last!r}")


def wait_points_sync(
    url: str, transaction_id: str, *, count: int, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """The points syncs the simulator received for one payment, once there are ``count``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own banner URL
            syncs: list[dict[str, Any]] = [
                s
                for s in json.loads(resp.read())["points_syncs"]
                if s["body"].get("transaction_id") == transaction_id
            ]
        if len(syncs) >= count:
            return syncs
        time.sleep(0.1)
    raise AssertionError(f"the simulator never received {count} points syncs")


def wait_restarted(run: LocalRun, service: str, old_pid: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run.drain()
        pid = run.supervisorctl("pid", service)
        if (
            pid.isdigit()
            and int(pid) not in (0, old_pid)
            and "RUNNING" in run.supervisorctl("status", service)
        ):
            return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"supervisord did not restart {service}:\n{run.tail()}")


def processes_of(run_dir: Path) -> dict[int, str]:
    """Live processes (not zombies) that name the run dir in their command line or environment."""
    marker = str(run_dir).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if marker in cmdline or marker in environ:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stack_pids(run: LocalRun) -> dict[str, int]:
    """supervisord, its services and the postmaster, from their own records."""
    services = run.supervisorctl("pid", "all").split()
    assert len(services) >= 3, services  # member, points, gateway at least
    pids = {f"service {i}": int(pid) for i, pid in enumerate(services)}
    pids["supervisord"] = int((run.run_dir / "supervisord.pid").read_text().split()[0])
    postmaster = run.run_dir / "postgres" / "data" / "postmaster.pid"
    pids["postgres"] = int(postmaster.read_text().splitlines()[0])
    assert all(pids.values()), pids
    return pids


def assert_stopped_cleanly(run: LocalRun, sig: signal.Signals) -> None:
    pids = stack_pids(run)
    before = processes_of(run.run_dir)
    assert set(pids.values()) <= set(before), (pids, before)
    assert any("nats-server" in cmd for cmd in before.values()), before

    code = run.stop(sig)

    assert code == 0, run.tail()
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert processes_of(run.run_dir) == {}
    assert "make run: stopped" in run.output


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Not under pytest's tmp dirs: those are 0700, and the embedded PostgreSQL runs as nobody.
    path = Path(tempfile.mkdtemp(prefix="mall-run-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(300)
@pytest.mark.integration
def test_make_run_serves_restarts_and_stops_cleanly(run_dir: Path) -> None:
    # Cold: initdb, migrations, seed.
    run = LocalRun(run_dir)
    try:
        banner = run.wait_banner()
        print(f"\nmake run, cold (initdb): {banner.ready_line}")
        # The demo car park's gates authenticated and every car went in and out.
        assert banner.cars["entries"] == banner.cars["exits"] > 0
        assert banner.cars["errors"] == 0
        payment_url = curl_url(banner.payment_curl)
        payment_body = banner.payment_curl[banner.payment_curl.index("--data") + 1]

        post_payment(payment_url, payment_body)
        post_payment(payment_url, payment_body)  # the same notification again: credited once
        wait_balance(banner, "demo-shopper", 88)

        old_pid = int(run.supervisorctl("pid", "points"))
        os.kill(old_pid, signal.SIGKILL)
        new_pid = wait_restarted(run, "points", old_pid)
        assert new_pid != old_pid
        again = payment_notification(DemoMall(), openid="demo-shopper", amount_fen=8800)
        post_payment(payment_url, json.dumps(again))
        body = wait_balance(banner, "demo-shopper", 176)
        assert len(body["ledger"]) == 2
        run.drain()
        assert any("exited: points (terminated by SIGKILL" in line for line in run.output)

        # The platform's own way in: the simulator signs and encrypts, the gateway verifies
        # and decrypts, and points reports the credit back to the simulator, signed.
        sent = subprocess.run(banner.simulator_payment_curl, check=True, capture_output=True)
        transaction_id = json.loads(sent.stdout)["transaction_id"]
        wait_balance(banner, "sim-shopper", 88)
        syncs = wait_points_sync(curl_url(banner.simulator_syncs_curl), transaction_id, count=1)
        assert syncs[0]["verified"] is True
        assert syncs[0]["body"]["transaction_id"] == transaction_id
        assert syncs[0]["body"]["increased_points"] == 88
        # A refund of half goes the same way back: notified, attributed, reversed, synced.
        simulator = curl_url(banner.simulator_syncs_curl).removesuffix("/control/points-syncs")
        status, answer = http(
            "POST",
            f"{simulator}/control/refunds",
            json.dumps({"transaction_id": transaction_id, "refund_amount": 4400}).encode(),
        )
        assert status == 202, answer
        wait_balance(banner, "sim-shopper", 44)
        reversal = wait_points_sync(curl_url(banner.simulator_syncs_curl), transaction_id, count=2)[
            1
        ]
        assert reversal["verified"] is True
        assert reversal["body"]["transaction_id"] == transaction_id
        assert reversal["body"]["earn_points"] is False
        assert reversal["body"]["total_points"] == 44

        assert_stopped_cleanly(run, signal.SIGINT)
    finally:
        run.kill()

    # Warm: the same run dir again; data kept, migrations and seed are no-ops.
    run = LocalRun(run_dir)
    try:
        banner = run.wait_banner()
        print(f"make run, warm: {banner.ready_line}")
        assert any("migrated" in line and "applied=0" in line for line in run.output)
        wait_balance(banner, "demo-shopper", 176)

        assert_stopped_cleanly(run, signal.SIGTERM)
    finally:
        run.kill()
