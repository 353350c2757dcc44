"""The WeChat Pay merchants this gateway receives notifications for, and their secrets.

Secrets are settings, not directory rows: ``WECHATPAY_MERCHANTS_FILE`` names a JSON file::

    [
      {
        "mchid": "1900000109",
        "apiv3_key": "<the merchant's 32-character APIv3 key>",
        "platform_public_keys": {
          "PUB_KEY_ID_0114232134912410000000000000": "pub_key.pem",
          "5157F09EFDC096DE15EBE81A47057A7232F1B8E1": "wechatpay_5157F0.pem"
        }
      }
    ]

Each merchant is one ``notify_url`` (``/wechatpay/notifications/{mchid}``). In service-provider
mode one provider merchant serves many malls; a mall with its own merchant is one more entry.
``platform_public_keys`` maps what the platform puts in ``Wechatpay-Serial`` (a platform
certificate serial or a ``PUB_KEY_ID_…``) to a PEM public key or platform certificate; list
old and new during a rotation. Relative paths are read from the file's own folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from wechatpay.signing import PublicKey, load_public_key

_SERIAL = re.compile(r"[A-Za-z0-9_]{1,64}")


class MerchantEntry(BaseModel):
    """One merchant as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mchid: str = Field(pattern=r"^[0-9]{1,32}$")
    apiv3_key: SecretStr
    platform_public_keys: dict[str, str] = Field(min_length=1)

    @field_validator("apiv3_key")
    @classmethod
    def _is_32_bytes(cls, key: SecretStr) -> SecretStr:
        size = len(key.get_secret_value().encode())
        if size != 32:
            raise ValueError(f"the APIv3 key is 32 characters; this one is {size} bytes")
        return key

    @field_validator("platform_public_keys")
    @classmethod
    def _serials_are_ids(cls, keys: dict[str, str]) -> dict[str, str]:
        for serial in keys:
            if not _SERIAL.fullmatch(serial):
                raise ValueError(f"{serial[:70]!r} is not a certificate serial or PUB_KEY_ID_…")
        return keys


_ENTRIES = TypeAdapter(list[MerchantEntry])


@dataclass(frozen=True)
class Merchant:
    """A merchant ready to open its notifications."""

    mchid: str
    apiv3_key: str = field(repr=False)
    platform_keys: Mapping[str, PublicKey] = field(repr=False)


Merchants = Mapping[str, Merchant]


def _public_key(folder: Path, mchid: str, serial: str, where: str) -> PublicKey:
    path = folder / Path(where).expanduser()
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ValueError(
            f"merchant {mchid}, key {serial}: cannot read {path}: {exc.strerror}"
        ) from None
    try:
        return load_public_key(pem)
    except ValueError as exc:
        raise ValueError(
            f"merchant {mchid}, key {serial}: {path} is not a PEM RSA public key or "
            f"certificate ({exc})"
        ) from None


def _where(loc: tuple[int | str, ...]) -> str:
    """``merchants[0].apiv3_key``: where in the file a problem is."""
    return "merchants" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def load_merchants(path: Path) -> dict[str, Merchant]:
    """Read and check the merchants file; ``ValueError`` says what is wrong, never a secret."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        entries = _ENTRIES.validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_where(err['loc'])}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise ValueError(f"{path}: {problems}") from None
    merchants: dict[str, Merchant] = {}
    for entry in entries:
        if entry.mchid in merchants:
            raise ValueError(f"{path}: merchant {entry.mchid} is listed twice")
        keys = {
            serial: _public_key(path.parent, entry.mchid, serial, where)
            for serial, where in entry.platform_public_keys.items()
        }
        merchants[entry.mchid] = Merchant(entry.mchid, entry.apiv3_key.get_secret_value(), keys)
    return merchants
