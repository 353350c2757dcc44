"""``python -m wechatpay_simulator``: flags (and an optional JSON file) to Settings, then serve.

Precedence: flags, then the ``--config`` file, then the key folder of ``--write-keys``
(platform key, merchant keys, APIv3 keys of the last run), then fresh ones.

The ``--config`` file (every key optional; paths relative to the file)::

    {"platform_private_key": "platform.pem", "platform_serial": "PUB_KEY_ID_01…",
     "retry_scale": 0.01, "delivery_timeout_s": 5, "require_synced_points_for_refund": true,
     "merchants": [{"mchid": "1900000109", "apiv3_key": "<32 chars>",
                    "public_key": "merchant_public.pem", "serial_no": "<certificate serial>",
                    "notify_url": "http://…", "auth_notify_url": "http://…"}],
     "miniprograms": {"wxd930ea5d5a258f4f": "<AppSecret>"}}

Mini-programs (for ``/sns/jscode2session``): ``--miniprogram APPID:SECRET`` (repeatable), then
the file's ``miniprograms``, then the key folder's ``miniprograms.json`` (the secrets of the
last run); with none of them, the demo mall's appid with a fresh secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from wechatpay import signing

from wechatpay_simulator.app import serve
from wechatpay_simulator.config import (
    DEFAULT_APPID,
    DEFAULT_MCHID,
    ConfigError,
    Merchant,
    MiniProgram,
    Settings,
    new_apiv3_key,
    platform_key_id,
)
from wechatpay_simulator.keyfolder import KeyFolder

log = structlog.get_logger(__name__)

_MERCHANT_FLAGS = {  # flag attribute -> key of a merchant entry in the config file
    "apiv3_key": "apiv3_key",
    "merchant_public_key": "public_key",
    "merchant_serial": "serial_no",
    "notify_url": "notify_url",
    "auth_notify_url": "auth_notify_url",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wechatpay_simulator",
        description="A WeChat Pay smart-mall (智慧商圈) platform: tests, make run, benchmarks.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090, help="0 picks a free port (default 8090)")
    p.add_argument("--config", type=Path, help="JSON file with any of the settings below")
    p.add_argument("--platform-private-key", type=Path, help="PEM; default: generated")
    p.add_argument("--platform-serial", help="platform key id; default PUB_KEY_ID_01… from the key")
    m = p.add_argument_group("merchant (added to, or updating, the config file's merchants)")
    m.add_argument("--mchid", help=f"default {DEFAULT_MCHID} when no merchant is configured")
    m.add_argument("--apiv3-key", help="32 characters; default: generated (or the last run's)")
    m.add_argument("--merchant-public-key", type=Path, help="PEM public key or certificate")
    m.add_argument("--merchant-serial", help="its certificate serial; default: from the key")
    m.add_argument("--notify-url", help="where payment and refund notifications go")
    m.add_argument("--auth-notify-url", help="where MALL_AUTH notifications go (--notify-url)")
    p.add_argument(
        "--miniprogram",
        action="append",
        default=[],
        metavar="APPID:SECRET",
        help=f"a mini-program whose login codes it exchanges (repeatable; default {DEFAULT_APPID})",
    )
    p.add_argument("--retry-scale", type=float, help="multiplies the retry gaps (tests: 0.01)")
    p.add_argument("--delivery-timeout", type=float, help="seconds per delivery attempt (5)")
    p.add_argument(
        "--require-synced-points-for-refund",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse (409) refunds of payments without a points sync, as the platform (on)",
    )
    p.add_argument("--write-keys", type=Path, metavar="DIR", help="key folder to read or create")
    p.add_argument("--no-serve", action="store_true", help="write the key folder and exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: a JSON object is expected")
    base = path.resolve().parent
    for key in ("platform_private_key",):
        if data.get(key):
            data[key] = base / data[key]
    for entry in data.get("merchants", []):
        if entry.get("public_key"):
            entry["public_key"] = base / entry["public_key"]
    return data


def _merchant_specs(args: argparse.Namespace, config: dict[str, Any]) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = [dict(e) for e in config.get("merchants", [])]
    mchid = args.mchid or (None if specs else DEFAULT_MCHID)
    if mchid is None:
        if any(getattr(args, flag) for flag in _MERCHANT_FLAGS):
            raise ConfigError("merchant flags need --mchid when the config file has merchants")
        return specs
    spec = next((s for s in specs if str(s.get("mchid")) == mchid), None)
    if spec is None:
        spec = {"mchid": mchid}
        specs.append(spec)
    for flag, key in _MERCHANT_FLAGS.items():
        if getattr(args, flag) is not None:
            spec[key] = getattr(args, flag)
    return specs


def _merchant(spec: dict[str, Any], folder: KeyFolder | None, old_keys: dict[str, str]) -> Merchant:
    mchid = str(spec.get("mchid") or "")
    if spec.get("public_key"):
        try:
            public_key = signing.load_public_key(Path(spec["public_key"]).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"merchant {mchid} public key: {exc}") from None
    elif folder is not None:
        public_key = folder.merchant_key(mchid).public_key()
    else:
        public_key = None
        log.warning("merchant_without_key", mchid=mchid, hint="its API calls will be refused")
    return Merchant(
        mchid,
        apiv3_key=spec.get("apiv3_key") or old_keys.get(mchid) or new_apiv3_key(),
        public_key=public_key,
        serial_no=spec.get("serial_no"),
        notify_url=spec.get("notify_url"),
        auth_notify_url=spec.get("auth_notify_url"),
    )


def _miniprograms(
    args: argparse.Namespace, config: dict[str, Any], folder: KeyFolder | None
) -> tuple[MiniProgram, ...]:
    secrets: dict[str, str] = folder.miniprogram_secrets() if folder else {}
    configured = config.get("miniprograms", {})
    if not isinstance(configured, dict):
        raise ConfigError("miniprograms must be an object {appid: secret}")
    secrets.update({str(k): str(v) for k, v in configured.items()})
    for flag in args.miniprogram:
        appid, _, secret = flag.partition(":")
        if not appid or not secret:
            raise ConfigError(f"--miniprogram {flag!r}: write it APPID:SECRET")
        secrets[appid] = secret
    if not secrets:
        return (MiniProgram(DEFAULT_APPID),)
    return tuple(MiniProgram(appid, secret) for appid, secret in secrets.items())


def settings_from(args: argparse.Namespace) -> Settings:
    config = _load_config(args.config)
    folder = KeyFolder(args.write_keys) if args.write_keys else None
    key_path = args.platform_private_key or config.get("platform_private_key")
    if key_path:
        try:
            platform_key = signing.load_private_key(Path(key_path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"platform private key {key_path}: {exc}") from None
    elif folder is not None:
        platform_key = folder.platform_key()
    else:
        platform_key = signing.generate_private_key()
    old_keys = folder.apiv3_keys() if folder else {}
    options: dict[str, Any] = {
        "retry_scale": args.retry_scale,
        "delivery_timeout_s": args.delivery_timeout,
        "require_synced_points_for_refund": args.require_synced_points_for_refund,
    }
    for name in options:
        if options[name] is None and name in config:
            options[name] = config[name]
    return Settings(
        platform_key=platform_key,
        platform_serial=args.platform_serial
        or config.get("platform_serial")
        or platform_key_id(platform_key.public_key()),
        merchants=tuple(_merchant(s, folder, old_keys) for s in _merchant_specs(args, config)),
        miniprograms=_miniprograms(args, config, folder),
        **{k: v for k, v in options.items() if v is not None},
    )


def _configure_logging(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer()
            if not sys.stderr.isatty()
            else structlog.dev.ConsoleRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    structlog.contextvars.bind_contextvars(service="wechatpay-simulator")


async def _serve(settings: Settings, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(settings, host=host, port=port) as running:
        mchids = ",".join(m.mchid for m in settings.merchants) or "-"
        print(
            f"wechatpay-simulator ready at {running.url} "
            f"platform_serial={settings.platform_serial} mchids={mchids}",
            flush=True,
        )
        await stop.wait()
    log.info("simulator_stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _configure_logging(args.log_level)
    if args.no_serve and not args.write_keys:
        print("--no-serve only makes sense with --write-keys DIR", file=sys.stderr)
        return 2
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"wechatpay-simulator: {exc}", file=sys.stderr)
        return 2
    if args.write_keys:
        written = KeyFolder(args.write_keys).write(settings)
        log.info("keys_written", files=[str(p) for p in written])
        if args.no_serve:
            print(f"wechatpay-simulator keys in {args.write_keys.resolve()}", flush=True)
            return 0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, args.host, args.port))
    return 0
