"""``python -m wechatpay_simulator``: the ready line, the key folder ``make run`` is wired from,
and how flags and a JSON file become Settings.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from wechatpay import signing
from wechatpay_simulator.cli import parser, settings_from
from wechatpay_simulator.config import ConfigError, platform_key_id

READY = re.compile(
    r"^wechatpay-simulator ready at (http://\S+) platform_serial=(\S+) mchids=(\S+)$"
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wechatpay_simulator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_cli_prints_one_ready_line_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wechatpay_simulator", "--port", "0", "--write-keys", str(keys),
        "--notify-url", "http://127.0.0.1:9/nowhere", "--retry-scale", "0.01",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode().strip()
        ready = READY.match(line)
        assert ready, line
        url, serial, mchids = ready.groups()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{url}/control/platform") as resp:
                platform = await resp.json()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)

    assert proc.returncode == 0, stderr.decode()
    assert mchids == "1900000109"
    assert platform["platform_serial"] == serial
    assert platform["merchants"][0]["notify_url"] == "http://127.0.0.1:9/nowhere"
    gateway = json.loads((keys / "merchants.json").read_text())
    assert list(gateway[0]["platform_public_keys"]) == [serial]


def test_the_key_folder_holds_what_the_gateway_and_the_points_service_need(tmp_path: Path) -> None:
    done = run_cli("--write-keys", str(tmp_path), "--no-serve", "--mchid", "1900000200")
    assert done.returncode == 0, done.stderr

    (entry,) = json.loads((tmp_path / "merchants.json").read_text())
    assert set(entry) == {"mchid", "apiv3_key", "platform_public_keys"}
    assert entry["mchid"] == "1900000200"
    assert len(entry["apiv3_key"]) == 32
    ((serial, pem_path),) = entry["platform_public_keys"].items()
    assert serial.startswith("PUB_KEY_ID_01")
    assert len(serial) == len("PUB_KEY_ID_0114232134912410000000000000")
    platform_public = signing.load_public_key(Path(pem_path).read_bytes())
    platform_private = signing.load_private_key(
        (tmp_path / "platform_private_key.pem").read_bytes()
    )
    assert platform_private.public_key().public_numbers() == platform_public.public_numbers()
    assert serial == platform_key_id(platform_public)

    (creds,) = json.loads((tmp_path / "merchant_credentials.json").read_text())
    assert creds["mchid"] == "1900000200"
    assert creds["apiv3_key"] == entry["apiv3_key"]
    assert creds["platform_serial"] == serial
    assert creds["platform_public_key"] == pem_path
    assert re.fullmatch(r"[0-9A-F]{40}", creds["serial_no"])
    assert signing.load_private_key(Path(creds["private_key"]).read_bytes())
    for secret in ("platform_private_key.pem", "merchants.json", "merchant_credentials.json",
                   "merchant_1900000200_private_key.pem"):  # fmt: skip
        assert stat.S_IMODE((tmp_path / secret).stat().st_mode) == 0o600, secret


def test_a_restart_keeps_the_keys_so_the_services_keep_trusting_it(tmp_path: Path) -> None:
    files = ["merchants.json", "merchant_credentials.json", "platform_public_key.pem",
             "platform_private_key.pem", "merchant_1900000109_private_key.pem"]  # fmt: skip
    first = run_cli("--write-keys", str(tmp_path), "--no-serve")
    before = {name: (tmp_path / name).read_text() for name in files}
    second = run_cli("--write-keys", str(tmp_path), "--no-serve")

    assert (first.returncode, second.returncode) == (0, 0)
    assert {name: (tmp_path / name).read_text() for name in files} == before


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--no-serve"], "--write-keys"),
        (["--apiv3-key", "too-short"], "32"),
        (["--merchant-public-key", "/nonexistent.pem"], "public key"),
        (["--config", "/nonexistent.json"], "--config"),
    ],
)
def test_unusable_settings_exit_2_saying_why(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    done = run_cli(*args, "--port", "0")

    assert done.returncode == 2
    assert complaint in done.stderr


def test_a_config_file_and_flags_make_the_settings(tmp_path: Path) -> None:
    merchant_key = signing.generate_private_key()
    (tmp_path / "m.pem").write_bytes(signing.public_key_pem(merchant_key.public_key()))
    platform_key = signing.generate_private_key()
    (tmp_path / "platform.pem").write_bytes(signing.private_key_pem(platform_key))
    config = {
        "platform_private_key": "platform.pem",
        "retry_scale": 0.5,
        "require_synced_points_for_refund": False,
        "merchants": [
            {"mchid": "1900000301", "apiv3_key": "A" * 32, "public_key": "m.pem",
             "serial_no": "SERIAL-301", "notify_url": "http://mall/a"},
            {"mchid": "1900000302", "apiv3_key": "B" * 32},
        ],
    }  # fmt: skip
    (tmp_path / "sim.json").write_text(json.dumps(config))

    flags = ["--config", str(tmp_path / "sim.json"), "--mchid", "1900000302",
             "--notify-url", "http://mall/b", "--auth-notify-url", "http://mall/auth",
             "--retry-scale", "0.01"]  # fmt: skip
    settings = settings_from(parser().parse_args(flags))

    first, second = settings.merchants
    assert settings.platform_serial == platform_key_id(platform_key.public_key())
    assert settings.retry_scale == 0.01  # the flag wins over the file
    assert settings.require_synced_points_for_refund is False
    assert first.serial_no == "SERIAL-301"
    assert first.public_key is not None
    assert first.public_key.public_numbers() == merchant_key.public_key().public_numbers()
    assert first.url_for("MALL_TRANSACTION.SUCCESS") == "http://mall/a"
    assert first.url_for("MALL_AUTH.ACTIVATE_CARD") == "http://mall/a"
    assert second.apiv3_key == "B" * 32
    assert second.public_key is None  # no key and no key folder: it cannot call the API
    assert second.url_for("MALL_REFUND.SUCCESS") == "http://mall/b"
    assert second.url_for("MALL_AUTH.ACTIVATE_CARD") == "http://mall/auth"


def test_without_anything_a_demo_merchant_with_the_platform_defaults() -> None:
    settings = settings_from(parser().parse_args([]))

    (merchant,) = settings.merchants
    assert merchant.mchid == "1900000109"
    assert settings.require_synced_points_for_refund is True
    assert settings.retry_scale == 1.0
    assert settings.retry_schedule_s[:4] == (15, 15, 30, 180)
    assert sum(settings.retry_schedule_s) == 86_640  # about a day


def test_merchant_flags_need_an_mchid_when_the_file_has_several(tmp_path: Path) -> None:
    (tmp_path / "sim.json").write_text(json.dumps({"merchants": [{"mchid": "1"}, {"mchid": "2"}]}))
    args = parser().parse_args(["--config", str(tmp_path / "sim.json"), "--notify-url", "x"])

    with pytest.raises(ConfigError, match="--mchid"):
        settings_from(args)
