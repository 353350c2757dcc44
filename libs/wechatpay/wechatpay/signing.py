"""WECHATPAY2-SHA256-RSA2048: RSA-SHA256 with PKCS#1 v1.5 over newline-joined fields."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
PrivateKey = rsa.RSAPrivateKey
PublicKey = rsa.RSAPublicKey


def load_private_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("WeChat Pay keys are RSA keys")
    return key


def load_public_key(pem: bytes) -> PublicKey:
    """A platform public key, from a PEM public key or a platform certificate."""
    key: object = (
        x509.load_pem_x509_certificate(pem).public_key()
        if b"CERTIFICATE" in pem
        else serialization.load_pem_public_key(pem)
    )
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("WeChat Pay keys are RSA keys")
    return key


def request_message(method: str, path: str, timestamp: str, nonce: str, body: str) -> str:
    """What the merchant signs: ``METHOD\\nPATH_WITH_QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n``."""
    return f"{method}\n{path}\n{timestamp}\n{nonce}\n{body}\n"


def response_message(timestamp: str, nonce: str, body: str) -> str:
    """What the platform signs (responses and notifications): ``TIMESTAMP\\nNONCE\\nBODY\\n``."""
    return f"{timestamp}\n{nonce}\n{body}\n"


def sign(private_key: PrivateKey, message: str) -> str:
    raw = private_key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode()


def verify(public_key: PublicKey, message: str, signature: str) -> bool:
    """True only for a valid signature; malformed input is simply not valid."""
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, message.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def nonce() -> str:
    return secrets.token_hex(16).upper()


@dataclass(frozen=True)
class Authorization:
    mchid: str
    serial_no: str
    nonce_str: str
    timestamp: str
    signature: str

    def header(self) -> str:
        return (
            f'{SCHEMA} mchid="{self.mchid}",nonce_str="{self.nonce_str}",'
            f'signature="{self.signature}",timestamp="{self.timestamp}",'
            f'serial_no="{self.serial_no}"'
        )


def authorize(
    *,
    mchid: str,
    serial_no: str,
    private_key: PrivateKey,
    method: str,
    path: str,
    body: str = "",
    timestamp: int | None = None,
    nonce_str: str | None = None,
) -> Authorization:
    """The ``Authorization`` of a merchant's request to the platform."""
    ts = str(timestamp if timestamp is not None else int(time.time()))
    nonce_str = nonce_str or nonce()
    signature = sign(private_key, request_message(method, path, ts, nonce_str, body))
    return Authorization(mchid, serial_no, nonce_str, ts, signature)


_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_authorization(header: str) -> Authorization | None:
    """Read a merchant's ``Authorization`` header (the platform side, e.g. the simulator)."""
    schema, _, params = header.partition(" ")
    if schema != SCHEMA:
        return None
    fields = dict(_PARAM.findall(params))
    try:
        return Authorization(
            fields["mchid"],
            fields["serial_no"],
            fields["nonce_str"],
            fields["timestamp"],
            fields["signature"],
        )
    except KeyError:
        return None


def generate_private_key() -> PrivateKey:
    """A fresh RSA-2048 key, the size the platform uses (simulator keys, test keys)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(private_key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: what ``load_private_key`` reads (apiclient_key.pem style)."""
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(public_key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM: what ``load_public_key`` reads (pub_key.pem style)."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
