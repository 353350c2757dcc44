"""``make run`` (``python deploy/local/run.py``, or ``python -m deploy.local``): see run.py."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc
from mall_testing.demo import DemoMall, seed

from deploy.local import banner, parking_demo
from deploy.local.ready import wait_ready
from deploy.local.settings import (
    BACKENDS,
    DEMO_MCHID,
    GATEWAY,
    HOST,
    SIMULATOR,
    RunSettings,
    SettingsError,
)
from deploy.local.stack import (
    StackError,
    check_ports_free,
    prepare_databases,
    prepare_run_dir,
    run_dir_lock,
    start_servers,
)
from deploy.local.supervise import CHILD_GRACE_S, Program, Supervisord, write_conf

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
_IMPORTED = time.monotonic()


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


def process_age_s() -> float:
    """Seconds since this process started: interpreter start-up and imports included."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


async def until_stopped(stop: asyncio.Event, aw: Awaitable[T]) -> T:
    """``await aw`` unless a stop signal comes first (then cancel it and raise Stopped)."""
    work = asyncio.ensure_future(aw)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        raise Stopped
    return work.result()


def simulator_argv(settings: RunSettings, *, serve: bool) -> list[str]:
    """The simulator's command: it keeps its keys in the run dir, so restarts reuse them."""
    argv = [
        sys.executable,
        "-m",
        "wechatpay_simulator",
        "--write-keys",
        str(settings.wechatpay_dir),
        "--mchid",
        DEMO_MCHID,
        "--notify-url",
        f"{settings.gateway_url}/wechatpay/notifications/{DEMO_MCHID}",
    ]
    if not serve:
        return [*argv, "--no-serve"]
    return [*argv, "--host", HOST, "--port", str(settings.simulator_port)]


def session_signing_key(settings: RunSettings) -> str:
    """The gateway's token signing key: made once per run dir, so sessions survive a restart."""
    path = settings.wechatpay_dir / "session_signing_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def write_wechatpay_keys(settings: RunSettings) -> dict[str, str]:
    """Have the simulator write (or keep) its keys; return the merchant's settings for the
    services that call WeChat Pay (points sync, parking pay-score and state sync, coupons'
    merchant coupons and clawbacks); the gateway reads its own WECHATPAY_MERCHANTS_FILE."""
    subprocess.run(  # noqa: S603 - our own interpreter and module
        simulator_argv(settings, serve=False), check=True, capture_output=True
    )
    [merchant] = json.loads((settings.wechatpay_dir / "merchant_credentials.json").read_text())
    return {
        "WECHATPAY_API_BASE": settings.simulator_url,
        "WECHATPAY_MCHID": merchant["mchid"],
        "WECHATPAY_MERCHANT_SERIAL": merchant["serial_no"],
        "WECHATPAY_MERCHANT_PRIVATE_KEY_FILE": merchant["private_key"],
        "WECHATPAY_PLATFORM_PUBLIC_KEYS": json.dumps(
            {merchant["platform_serial"]: merchant["platform_public_key"]}
        ),
        # The simulator's statement, so `make reconcile` also checks the platform's side.
        "WECHATPAY_BILL_URL": f"{settings.simulator_url}/control/bill",
    }


def programs(settings: RunSettings, urls: Mapping[str, str], nats_url: str) -> list[Program]:
    common = {
        "NATS_URL": nats_url,
        "LOG_FORMAT": "console",
        "LOG_LEVEL": settings.log_level,
        "SHUTDOWN_GRACE_S": str(CHILD_GRACE_S),
        "PYTHONUNBUFFERED": "1",
        "MALL_RUN_DIR": str(settings.run_dir),  # marks every process of this run
    }
    found = [
        Program(
            b.name,
            [sys.executable, "-m", b.name, "all"],
            {
                **common,
                "DATABASE_URL": urls[b.name],
                "GRPC_HOST": HOST,
                "GRPC_PORT": str(settings.grpc_ports[b.name]),
                # parking holds points for parking hours at the exit quote (off the payment path).
                **(
                    {"POINTS_GRPC_TARGET": settings.grpc_target("points")}
                    if b.name == "parking"
                    else {}
                ),
            },
            priority=10,
        )
        for b in BACKENDS
    ]
    gateway_env = {
        **common,
        "HTTP_HOST": HOST,
        "HTTP_PORT": str(settings.gateway_port),
        **{f"{b.name.upper()}_GRPC_TARGET": settings.grpc_target(b.name) for b in BACKENDS},
        "WECHATPAY_MERCHANTS_FILE": str(settings.wechatpay_dir / "merchants.json"),
        # Mini-program login: wx.login codes are exchanged at the simulator.
        "WECHAT_API_BASE": settings.simulator_url,
        "MINIPROGRAM_SECRETS_FILE": str(settings.wechatpay_dir / "miniprograms.json"),
        "SESSION_SIGNING_KEY": session_signing_key(settings),
        # The demo curl posts a decrypted resource; the simulator uses the signed route.
        "WECHATPAY_ACCEPT_UNSIGNED": "true",
    }
    found.append(Program(GATEWAY, [sys.executable, "-m", GATEWAY, "serve"], gateway_env, 20))
    found.append(Program(SIMULATOR, simulator_argv(settings, serve=True), common, 5))
    return found


async def serve(settings: RunSettings, postgres_url: str, nats_url: str) -> int:
    """Databases, supervisord and its services, readiness, demo mall; then wait for a stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The services get their URLs from their own stanza, never the user's admin URL.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    supervisord: Supervisord | None = None
    try:
        phases = [("servers", process_age_s())]
        migrate_env = {**env, "NATS_URL": nats_url, "LOG_FORMAT": "console"}
        names = [b.name for b in BACKENDS]
        urls = await until_stopped(stop, prepare_databases(postgres_url, names, migrate_env))
        phases.append(("databases", process_age_s()))
        points_wechatpay = await until_stopped(
            stop, asyncio.to_thread(write_wechatpay_keys, settings)
        )
        conf = write_conf(settings.run_dir, programs(settings, urls, nats_url), REPO)
        # Through supervisord's own environment: a JSON value cannot pass a program stanza.
        supervisord = await Supervisord.start(conf, len(BACKENDS) + 2, {**env, **points_wechatpay})
        await until_stopped(
            stop,
            wait_ready(
                supervisord,
                readyz_url=f"{settings.gateway_url}/readyz",
                grpc_targets={b.name: settings.grpc_target(b.name) for b in BACKENDS},
                timeout_s=settings.ready_timeout_s,
            ),
        )
        phases.append(("services", process_age_s()))
        mall = await until_stopped(stop, seed_demo_mall(settings))
        phases.append(("seed", process_age_s()))
        cars = await until_stopped(stop, demo_car_park(settings, mall))
        phases.append(("car park", process_age_s()))
        text = banner.render(
            settings,
            mall,
            cars=cars,
            phases=phases,
            postgres_url=postgres_url,
            nats_url=nats_url,
            conf=conf.path,
        )
        print(text, flush=True)
        code = await until_stopped(stop, supervisord.proc.wait())
        raise StackError(f"supervisord exited on its own (code {code}); its output is above")
    except Stopped:
        return 0
    except StackError as exc:  # said before the stop, whose lines would bury it
        print(f"make run: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if supervisord is not None:
            print("make run: stopping the services", flush=True)
            await supervisord.stop()


async def seed_demo_mall(settings: RunSettings) -> DemoMall:
    try:
        return await seed(settings.grpc_target("member"), DemoMall())
    except grpc.aio.AioRpcError as exc:
        raise StackError(f"seeding the demo mall failed: {exc.code()} {exc.details()}") from exc


async def demo_car_park(settings: RunSettings, mall: DemoMall) -> dict[str, Any]:
    try:
        credential = await parking_demo.open_car_park(settings, mall)
        return await parking_demo.drive_cars(settings, mall, credential)
    except (grpc.aio.AioRpcError, RuntimeError) as exc:
        raise StackError(f"opening the demo car park failed: {exc}") from exc


def _append_when_a_file() -> None:
    """supervisord appends the services' output to /dev/stdout; when that is a file
    (``make run > run.log``) our own lines must append too, or they would overwrite theirs."""
    for fd in (sys.stdout.fileno(), sys.stderr.fileno()):
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    try:
        settings = RunSettings.from_env(os.environ, REPO)
    except SettingsError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    os.environ["MALL_RUN_DIR"] = str(settings.run_dir)
    _append_when_a_file()
    # Both mean "stop", also when we were started with SIGINT ignored (a `&` job in a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        prepare_run_dir(settings)
        with run_dir_lock(settings.run_dir), contextlib.ExitStack() as servers:
            try:
                check_ports_free(settings.listen_ports())
                postgres_url, nats_url = start_servers(settings, servers)
                if settings.database_url is None or settings.nats_url is None:
                    servers.callback(print, "make run: stopping the embedded servers", flush=True)
                return asyncio.run(serve(settings, postgres_url, nats_url))
            except KeyboardInterrupt:
                return 0
            finally:
                # Stopping now: a second Ctrl-C must not cut the servers' shutdown short.
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_IGN)
    except StackError as exc:
        print(f"make run: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("make run: stopped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
