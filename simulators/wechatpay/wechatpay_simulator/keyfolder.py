"""The key folder (``--write-keys DIR``): what the rest of a local stack is configured from.

Read or create, so a restarted simulator keeps its keys and the services keep trusting it:

- ``platform_private_key.pem`` (0600): reused when present, else generated;
- ``platform_public_key.pem``: what the gateway and the points service verify with;
- ``merchants.json`` (0600): the gateway's merchants file, a list of
  ``{"mchid", "apiv3_key", "platform_public_keys": {serial: path}}``; its APIv3 keys are reused;
- ``merchant_<mchid>_private_key.pem`` (0600): a merchant key made here when the merchant's
  public key was not given, for whoever calls the platform API as that merchant;
- ``merchant_credentials.json`` (0600): the merchant side, a list of ``{"mchid", "serial_no",
  "private_key", "apiv3_key", "platform_serial", "platform_public_key"}`` (paths absolute);
- ``miniprograms.json`` (0600): ``{appid: secret}``, the gateway's ``MINIPROGRAM_SECRETS_FILE``;
  its secrets are reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wechatpay import signing
from wechatpay.signing import PrivateKey

from wechatpay_simulator.config import Merchant, Settings

PLATFORM_PRIVATE_KEY = "platform_private_key.pem"
PLATFORM_PUBLIC_KEY = "platform_public_key.pem"
MERCHANTS = "merchants.json"
MERCHANT_CREDENTIALS = "merchant_credentials.json"
MINIPROGRAMS = "miniprograms.json"


def merchant_private_key_name(mchid: str) -> str:
    return f"merchant_{mchid}_private_key.pem"


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    """Atomically, so a reader never sees half a file; secrets readable by the owner only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


class KeyFolder:
    def __init__(self, path: Path) -> None:
        self.path = path.resolve()

    def _key(self, name: str) -> PrivateKey:
        file = self.path / name
        if file.exists():
            return signing.load_private_key(file.read_bytes())
        self.path.mkdir(parents=True, exist_ok=True)
        key = signing.generate_private_key()
        _write(file, signing.private_key_pem(key), secret=True)
        return key

    def platform_key(self) -> PrivateKey:
        return self._key(PLATFORM_PRIVATE_KEY)

    def merchant_key(self, mchid: str) -> PrivateKey:
        return self._key(merchant_private_key_name(mchid))

    def apiv3_keys(self) -> dict[str, str]:
        """The APIv3 keys of an earlier run, by mchid (none when there was none)."""
        file = self.path / MERCHANTS
        if not file.exists():
            return {}
        entries: Any = json.loads(file.read_text())
        return {
            str(e["mchid"]): str(e["apiv3_key"])
            for e in entries
            if isinstance(e, dict) and "mchid" in e and "apiv3_key" in e
        }

    def miniprogram_secrets(self) -> dict[str, str]:
        """The mini-program secrets of an earlier run, by appid."""
        file = self.path / MINIPROGRAMS
        if not file.exists():
            return {}
        entries: Any = json.loads(file.read_text())
        if not isinstance(entries, dict):
            return {}
        return {str(appid): str(secret) for appid, secret in entries.items()}

    def _matching_private_key(self, merchant: Merchant) -> Path | None:
        """This folder's private key of the merchant, if it is the one the simulator trusts."""
        file = self.path / merchant_private_key_name(merchant.mchid)
        if merchant.public_key is None or not file.exists():
            return None
        key = signing.load_private_key(file.read_bytes())
        same = key.public_key().public_numbers() == merchant.public_key.public_numbers()
        return file if same else None

    def write(self, settings: Settings) -> list[Path]:
        """Write the public files for ``settings``; the paths written."""
        self.path.mkdir(parents=True, exist_ok=True)
        public = self.path / PLATFORM_PUBLIC_KEY
        _write(public, signing.public_key_pem(settings.platform_public_key), secret=False)
        serial = settings.platform_serial
        gateway = [
            {
                "mchid": m.mchid,
                "apiv3_key": m.apiv3_key,
                "platform_public_keys": {serial: str(public)},
            }
            for m in settings.merchants
        ]
        credentials = []
        for m in settings.merchants:
            private = self._matching_private_key(m)
            credentials.append(
                {
                    "mchid": m.mchid,
                    "serial_no": m.serial_no,
                    "private_key": str(private) if private else None,
                    "apiv3_key": m.apiv3_key,
                    "platform_serial": serial,
                    "platform_public_key": str(public),
                }
            )
        merchants = self.path / MERCHANTS
        _write(merchants, (json.dumps(gateway, indent=2) + "\n").encode(), secret=True)
        creds = self.path / MERCHANT_CREDENTIALS
        _write(creds, (json.dumps(credentials, indent=2) + "\n").encode(), secret=True)
        apps = self.path / MINIPROGRAMS
        secrets = dict(settings.miniprogram_secrets())
        _write(apps, (json.dumps(secrets, indent=2) + "\n").encode(), secret=True)
        return [public, merchants, creds, apps]
