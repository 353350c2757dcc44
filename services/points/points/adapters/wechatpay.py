"""The WeChat Pay client points uses, built from its settings (keys read from files)."""

from __future__ import annotations

from wechatpay.client import WeChatPayClient
from wechatpay.signing import load_private_key, load_public_key

from points.config import Settings


def client_from_settings(settings: Settings) -> WeChatPayClient | None:
    """A client (not yet opened), or None when no platform is configured.

    Key files are read and parsed here, at start: a wrong path or a malformed key stops the
    process now instead of failing every report later.
    """
    if not settings.wechatpay_api_base:
        return None
    key_file = settings.wechatpay_merchant_private_key_file
    if key_file is None:  # the settings validator makes this unreachable
        raise ValueError("WECHATPAY_MERCHANT_PRIVATE_KEY_FILE is required")
    try:
        private_key = load_private_key(key_file.read_bytes())
    except ValueError as exc:
        raise ValueError(f"WECHATPAY_MERCHANT_PRIVATE_KEY_FILE {key_file}: {exc}") from exc
    platform_keys = {}
    for serial, path in settings.wechatpay_platform_public_keys.items():
        try:
            platform_keys[serial] = load_public_key(path.read_bytes())
        except ValueError as exc:
            raise ValueError(f"WECHATPAY_PLATFORM_PUBLIC_KEYS[{serial}] {path}: {exc}") from exc
    return WeChatPayClient(
        base_url=settings.wechatpay_api_base,
        mchid=settings.wechatpay_mchid,
        serial_no=settings.wechatpay_merchant_serial,
        private_key=private_key,
        platform_keys=platform_keys,
        timeout_s=settings.wechatpay_timeout_s,
    )
