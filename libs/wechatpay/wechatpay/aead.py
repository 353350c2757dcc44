"""AEAD_AES_256_GCM: how the platform encrypts notification resources (and certificates).

The key is the merchant's 32-character APIv3 key as UTF-8 bytes; nonce and associated data
are UTF-8 strings; the ciphertext is base64 with the 16-byte tag appended.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ALGORITHM = "AEAD_AES_256_GCM"


class DecryptError(ValueError):
    """Tampered ciphertext or tag, wrong associated data, or the wrong key."""


def _key(apiv3_key: str) -> AESGCM:
    raw = apiv3_key.encode()
    if len(raw) != 32:
        raise ValueError("the APIv3 key is 32 bytes")
    return AESGCM(raw)


def encrypt(apiv3_key: str, nonce: str, associated_data: str, plaintext: bytes) -> str:
    sealed = _key(apiv3_key).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return base64.b64encode(sealed).decode()


def decrypt(apiv3_key: str, nonce: str, associated_data: str, ciphertext: str) -> bytes:
    try:
        sealed = base64.b64decode(ciphertext, validate=True)
        return _key(apiv3_key).decrypt(nonce.encode(), sealed, associated_data.encode())
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise DecryptError("resource did not decrypt: tampered, or the wrong key") from exc
