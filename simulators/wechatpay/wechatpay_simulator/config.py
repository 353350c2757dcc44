"""What a simulator is: its platform key, the merchants it knows and how it retries.

Plain values, built by the CLI (flags, a JSON file, a key folder) or directly by a test.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from wechatpay import signing
from wechatpay.signing import PrivateKey, PublicKey

#: The platform's notification retry gaps in seconds: 15s 15s 30s 3m 10m 20m 30m 30m 30m 60m
#: 3h 3h 3h 6h 6h (about a day). Scaled by ``Settings.retry_scale``.
RETRY_SCHEDULE_S: tuple[float, ...] = (
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
)  # fmt: skip
#: The mall of ``mall_testing.demo.DemoMall``: the merchant a bare ``make run`` knows.
DEFAULT_MCHID = "1900000109"
#: ... and its mini-program, the one a bare ``make run`` lets shoppers log in to.
DEFAULT_APPID = "wxd930ea5d5a258f4f"


class ConfigError(ValueError):
    """A setting we cannot use; the message says which."""


def _der(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def platform_key_id(public_key: PublicKey) -> str:
    """A platform public key id (``PUB_KEY_ID_01`` + 26 digits), stable for a given key."""
    digits = int.from_bytes(hashlib.sha256(_der(public_key)).digest()) % 10**26
    return f"PUB_KEY_ID_01{digits:026d}"


def certificate_serial(public_key: PublicKey) -> str:
    """A merchant certificate serial (40 hex digits), stable for a given key."""
    return hashlib.sha1(_der(public_key), usedforsecurity=False).hexdigest().upper()


def new_apiv3_key() -> str:
    """32 letters and digits, the shape of the APIv3 key a merchant sets in its portal."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


@dataclass(frozen=True)
class Merchant:
    """A merchant (a mall) the platform knows."""

    mchid: str
    apiv3_key: str = field(default_factory=new_apiv3_key, repr=False)
    #: The merchant's public key and certificate serial: how its API calls are verified.
    #: Without a key the merchant cannot call the platform API (401 SIGN_ERROR).
    public_key: PublicKey | None = field(default=None, repr=False)
    serial_no: str | None = None
    #: Where MALL_TRANSACTION / MALL_REFUND notifications go.
    notify_url: str | None = None
    #: Where MALL_AUTH notifications go (the platform has a separate URL); notify_url if None.
    auth_notify_url: str | None = None

    def __post_init__(self) -> None:
        if not self.mchid:
            raise ConfigError("a merchant needs an mchid")
        if len(self.apiv3_key.encode()) != 32:
            raise ConfigError(f"merchant {self.mchid}: the APIv3 key must be 32 bytes")
        if self.public_key is not None and self.serial_no is None:
            object.__setattr__(self, "serial_no", certificate_serial(self.public_key))

    def url_for(self, event_type: str) -> str | None:
        if event_type.startswith("MALL_AUTH."):
            return self.auth_notify_url or self.notify_url
        return self.notify_url


@dataclass(frozen=True)
class MiniProgram:
    """A mini-program the platform knows: its appid and AppSecret (for code-to-session)."""

    appid: str
    secret: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)

    def __post_init__(self) -> None:
        if not self.appid or not self.secret:
            raise ConfigError("a mini-program needs an appid and a secret")


@dataclass(frozen=True)
class Settings:
    platform_key: PrivateKey = field(repr=False)
    platform_serial: str
    merchants: tuple[Merchant, ...] = ()
    #: Multiplies every gap of the retry schedule (tests: 0.01 or 0).
    retry_scale: float = 1.0
    retry_schedule_s: tuple[float, ...] = RETRY_SCHEDULE_S
    #: The platform sends a refund notification only for a payment whose points were synced.
    require_synced_points_for_refund: bool = True
    #: ... and only within this many days of the payment.
    refund_window_days: int = 30
    #: How long one delivery attempt may take before it counts as failed.
    delivery_timeout_s: float = 5.0
    #: Merchant requests whose timestamp is further off than this are refused.
    max_clock_skew_s: int = 300
    #: Mini-programs whose ``wx.login`` codes ``/sns/jscode2session`` exchanges.
    miniprograms: tuple[MiniProgram, ...] = ()
    #: How long a login code can be exchanged (WeChat: 5 minutes).
    login_code_ttl_s: float = 300.0

    def __post_init__(self) -> None:
        if self.retry_scale < 0:
            raise ConfigError("retry_scale must not be negative")
        if self.delivery_timeout_s <= 0:
            raise ConfigError("delivery_timeout_s must be positive")
        mchids = [m.mchid for m in self.merchants]
        if len(set(mchids)) != len(mchids):
            raise ConfigError("each mchid may be configured once")
        appids = [m.appid for m in self.miniprograms]
        if len(set(appids)) != len(appids):
            raise ConfigError("each mini-program appid may be configured once")

    @classmethod
    def create(
        cls,
        merchants: Iterable[Merchant] = (),
        *,
        platform_key: PrivateKey | None = None,
        platform_serial: str | None = None,
        **options: Any,
    ) -> Settings:
        """Settings with a fresh platform key unless one is given; the key id follows the key."""
        key = platform_key or signing.generate_private_key()
        serial = platform_serial or platform_key_id(key.public_key())
        return cls(key, serial, tuple(merchants), **options)

    @property
    def platform_public_key(self) -> PublicKey:
        return self.platform_key.public_key()

    def merchant_map(self) -> Mapping[str, Merchant]:
        return {m.mchid: m for m in self.merchants}

    def miniprogram_secrets(self) -> Mapping[str, str]:
        return {m.appid: m.secret for m in self.miniprograms}
