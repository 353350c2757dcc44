"""Notifications the platform POSTs to a merchant: verify, then decrypt.

``open_notification`` is the receiving side (the gateway); ``seal_notification`` and its two
halves are the sending side (the simulator and tests), so both ends share one implementation
of the envelope. Checks run cheapest-and-most-telling first, and each refusal carries a stable
code:

========================== ============================================================
``missing_signature_headers``  a ``Wechatpay-Signature/-Timestamp/-Nonce/-Serial`` is absent
``unknown_serial``             no configured platform key has that serial / public key id
``stale_timestamp``            not unix seconds, or further than ``max_skew_s`` from now
``bad_signature``              RSA-SHA256 over ``timestamp\\nnonce\\nbody\\n`` does not verify
``invalid_json``               the (authentic) body is not a JSON object
``invalid_envelope``           ``id``, ``event_type`` or the ``resource`` fields are missing
``unsupported_algorithm``      ``resource.algorithm`` is not ``AEAD_AES_256_GCM``
``decrypt_failed``             tampered ciphertext or tag, other associated data, other key
``invalid_resource``           the plaintext is not a JSON object
========================== ============================================================

The first four are :class:`~kit.errors.Unauthenticated` (who sent this?), the rest
:class:`~kit.errors.InvalidInput` (what was sent). The platform's signature probes
(``WECHATPAY/SIGNTEST/…``) are not special: they simply fail verification.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kit.errors import InvalidInput, Unauthenticated

from wechatpay import aead, signing
from wechatpay.signing import PrivateKey, PublicKey

SIGNATURE = "Wechatpay-Signature"
TIMESTAMP = "Wechatpay-Timestamp"
NONCE = "Wechatpay-Nonce"
SERIAL = "Wechatpay-Serial"
SIGNATURE_TYPE = "Wechatpay-Signature-Type"
REQUIRED_HEADERS = (SIGNATURE, TIMESTAMP, NONCE, SERIAL)
RESOURCE_TYPE = "encrypt-resource"

_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class OpenedNotification:
    """A verified notification with its resource decrypted."""

    id: str
    create_time: str
    event_type: str
    summary: str
    resource: dict[str, Any]


def _header(lowered: Mapping[str, str], name: str) -> str:
    return lowered.get(name.lower(), "")


def _platform_key(platform_keys: Mapping[str, PublicKey], serial: str) -> PublicKey | None:
    # Certificate serials are hex, and hex may be written in either case; public key ids
    # (PUB_KEY_ID_…) are matched the same way, which is harmless.
    key = platform_keys.get(serial)
    if key is not None:
        return key
    wanted = serial.upper()
    return next((k for s, k in platform_keys.items() if s.upper() == wanted), None)


def verify_headers(
    headers: Mapping[str, str],
    body: bytes,
    *,
    platform_keys: Mapping[str, PublicKey],
    now: float,
    max_skew_s: float = 300,
) -> None:
    """Who sent this? Raises :class:`Unauthenticated` unless the platform signed ``body``
    within ``max_skew_s`` of ``now``. Also the check for the platform's API responses."""
    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in REQUIRED_HEADERS if not _header(lowered, h)]
    if missing:
        raise Unauthenticated("missing_signature_headers", f"missing {', '.join(missing)}")
    serial = _header(lowered, SERIAL).strip()
    key = _platform_key(platform_keys, serial)
    if key is None:
        raise Unauthenticated("unknown_serial", f"no platform key with serial {serial[:64]!r}")
    timestamp = _header(lowered, TIMESTAMP)
    if not _UNIX_SECONDS.fullmatch(timestamp):
        raise Unauthenticated("stale_timestamp", "Wechatpay-Timestamp is not unix seconds")
    skew = int(timestamp) - now
    if abs(skew) > max_skew_s:
        raise Unauthenticated(
            "stale_timestamp", f"timestamp {skew:+.0f} s from now (allowed ±{max_skew_s:g} s)"
        )
    try:
        text = body.decode()
    except UnicodeDecodeError:
        # The platform signs UTF-8 JSON text; other bytes cannot carry its signature.
        raise Unauthenticated("bad_signature", "body is not UTF-8 text") from None
    message = signing.response_message(timestamp, _header(lowered, NONCE), text)
    if not signing.verify(key, message, _header(lowered, SIGNATURE)):
        raise Unauthenticated("bad_signature", "signature does not verify")


def _text(obj: Mapping[str, Any], field: str, where: str, *, required: bool = True) -> str:
    value = obj.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidInput("invalid_envelope", f"{where}{field}: a non-empty string is required")
    return value


def decrypt_envelope(body: bytes, *, apiv3_key: str) -> OpenedNotification:
    """What was sent? The envelope checked and its resource decrypted (``InvalidInput``).

    Only for a body :func:`verify_headers` accepted.
    """
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput("invalid_json", f"body is not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise InvalidInput("invalid_json", "body is not a JSON object")
    notification_id = _text(envelope, "id", "")
    event_type = _text(envelope, "event_type", "")
    create_time = _text(envelope, "create_time", "", required=False)
    summary = _text(envelope, "summary", "", required=False)
    resource = envelope.get("resource")
    if not isinstance(resource, dict):
        raise InvalidInput("invalid_envelope", "resource: an object is required")
    algorithm = _text(resource, "algorithm", "resource.")
    if algorithm != aead.ALGORITHM:
        raise InvalidInput(
            "unsupported_algorithm", f"resource.algorithm {algorithm[:64]!r} is not supported"
        )
    ciphertext = _text(resource, "ciphertext", "resource.")
    nonce = _text(resource, "nonce", "resource.")
    # The platform documents associated_data as optional; absent means empty, as in its SDKs.
    associated_data = _text(resource, "associated_data", "resource.", required=False)
    try:
        plaintext = aead.decrypt(apiv3_key, nonce, associated_data, ciphertext)
    except aead.DecryptError:
        raise InvalidInput(
            "decrypt_failed", "resource did not decrypt: tampered, or another APIv3 key"
        ) from None
    try:
        decrypted = json.loads(plaintext)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("invalid_resource", "decrypted resource is not JSON") from None
    if not isinstance(decrypted, dict):
        raise InvalidInput("invalid_resource", "decrypted resource is not a JSON object")
    return OpenedNotification(notification_id, create_time, event_type, summary, decrypted)


def open_notification(
    headers: Mapping[str, str],
    body: bytes,
    *,
    platform_keys: Mapping[str, PublicKey],
    apiv3_key: str,
    now: float,
    max_skew_s: float = 300,
) -> OpenedNotification:
    """Verify a notification (headers are matched case-insensitively), then decrypt it."""
    verify_headers(headers, body, platform_keys=platform_keys, now=now, max_skew_s=max_skew_s)
    return decrypt_envelope(body, apiv3_key=apiv3_key)


# -- the sending side: the platform (simulator) and tests --------------------------------


def seal_resource(
    apiv3_key: str,
    plaintext: Mapping[str, Any] | bytes,
    *,
    associated_data: str = "",
    nonce: str | None = None,
    original_type: str = "",
) -> dict[str, str]:
    """The ``resource`` object of a notification: ``plaintext`` encrypted for the merchant."""
    raw = plaintext if isinstance(plaintext, bytes) else json.dumps(plaintext).encode()
    nonce = nonce or signing.nonce()[:12]
    return {
        "algorithm": aead.ALGORITHM,
        "ciphertext": aead.encrypt(apiv3_key, nonce, associated_data, raw),
        "associated_data": associated_data,
        "nonce": nonce,
        "original_type": original_type,
    }


def signature_headers(
    private_key: PrivateKey,
    serial: str,
    body: bytes,
    *,
    timestamp: int,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers the platform signs a notification (or an API response) with."""
    nonce = nonce or signing.nonce()
    message = signing.response_message(str(timestamp), nonce, body.decode())
    return {
        SIGNATURE: signing.sign(private_key, message),
        TIMESTAMP: str(timestamp),
        NONCE: nonce,
        SERIAL: serial,
        SIGNATURE_TYPE: signing.SCHEMA,
    }


@dataclass(frozen=True)
class SealedNotification:
    headers: dict[str, str]
    body: bytes


def seal_notification(
    *,
    notification_id: str,
    event_type: str,
    resource: Mapping[str, Any],
    apiv3_key: str,
    private_key: PrivateKey,
    serial: str,
    timestamp: int,
    summary: str = "",
    associated_data: str = "",
    create_time: datetime | None = None,
) -> SealedNotification:
    """A whole notification as the platform sends it: encrypted resource, signed body."""
    envelope = {
        "id": notification_id,
        "create_time": (create_time or datetime.fromtimestamp(timestamp, UTC)).isoformat(),
        "event_type": event_type,
        "resource_type": RESOURCE_TYPE,
        "summary": summary,
        "resource": seal_resource(apiv3_key, resource, associated_data=associated_data),
    }
    body = json.dumps(envelope, ensure_ascii=False).encode()
    headers = signature_headers(private_key, serial, body, timestamp=timestamp)
    return SealedNotification(headers, body)
