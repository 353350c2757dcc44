"""Opening platform notifications: every refusal has its own code, every check its order."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from kit.errors import AppError, ErrorKind, InvalidInput, Unauthenticated
from wechatpay import notifications as wn
from wechatpay.notifications import OpenedNotification, open_notification
from wechatpay.signing import PrivateKey, PublicKey, load_public_key

#: Keys are made at test time (none are kept in git): two platform keys, one behind a
#: platform certificate, as during a key rotation.
APIV3_KEY = "0123456789abcdefABCDEF0123456789"


def new_key() -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate_pem(key: PrivateKey, serial: int) -> bytes:
    """A self-signed certificate standing in for a platform certificate."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (test)")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Platform:
    """The platform's side: a public key id key and a certificate key, both current."""

    key: PrivateKey
    key_id: str
    cert_key: PrivateKey
    cert_serial: str
    cert_pem: bytes

    def public_keys(self) -> dict[str, PublicKey]:
        return {self.key_id: self.key.public_key(), self.cert_serial: self.cert_key.public_key()}


@pytest.fixture(scope="session")
def platform() -> Platform:
    cert_key = new_key()
    serial = x509.random_serial_number()
    return Platform(
        key=new_key(),
        key_id="PUB_KEY_ID_0114232134912410000000000000",
        cert_key=cert_key,
        cert_serial=f"{serial:X}",
        cert_pem=certificate_pem(cert_key, serial),
    )


@pytest.fixture(scope="session")
def stranger_key() -> PrivateKey:
    """A key the merchant never configured."""
    return new_key()


# -- helpers ----------------------------------------------------------------------------------

RESOURCE = {"transaction_id": "4200000001202611260001", "amount": 8800, "openid": "o-1"}
NOW = 1_790_000_000


def envelope(resource: Mapping[str, str], **fields: Any) -> bytes:
    body = {
        "id": "EV-2018-0001",
        "create_time": "2026-11-26T10:00:00+08:00",
        "event_type": "MALL_TRANSACTION.SUCCESS",
        "resource_type": "encrypt-resource",
        "summary": "商圈支付结果通知",
        "resource": dict(resource),
        **fields,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def sealed(**overrides: str) -> dict[str, str]:
    resource = wn.seal_resource(APIV3_KEY, RESOURCE, associated_data="mall_transaction")
    resource.update(overrides)
    return resource


def signed(key: PrivateKey, serial: str, body: bytes, *, timestamp: int = NOW) -> dict[str, str]:
    return wn.signature_headers(key, serial, body, timestamp=timestamp)


def opened(platform: Platform, headers: Mapping[str, str], body: bytes) -> OpenedNotification:
    return open_notification(
        headers, body, platform_keys=platform.public_keys(), apiv3_key=APIV3_KEY, now=NOW
    )


def refused(platform: Platform, headers: Mapping[str, str], body: bytes) -> AppError:
    with pytest.raises(AppError) as caught:
        opened(platform, headers, body)
    return caught.value


def unauthenticated(platform: Platform, headers: Mapping[str, str], body: bytes) -> str:
    error = refused(platform, headers, body)
    assert isinstance(error, Unauthenticated)
    assert error.kind is ErrorKind.UNAUTHENTICATED
    return error.code


def invalid(platform: Platform, body: bytes) -> str:
    error = refused(platform, signed(platform.key, platform.key_id, body), body)
    assert isinstance(error, InvalidInput)
    assert error.kind is ErrorKind.INVALID
    return error.code


# -- accepted -------------------------------------------------------------------------------


def test_a_signed_notification_opens_with_its_resource_decrypted(platform: Platform) -> None:
    body = envelope(sealed())

    notification = opened(platform, signed(platform.key, platform.key_id, body), body)

    assert notification == OpenedNotification(
        id="EV-2018-0001",
        create_time="2026-11-26T10:00:00+08:00",
        event_type="MALL_TRANSACTION.SUCCESS",
        summary="商圈支付结果通知",
        resource=RESOURCE,
    )


def test_header_names_are_matched_in_any_case(platform: Platform) -> None:
    body = envelope(sealed())
    headers = {k.lower(): v for k, v in signed(platform.key, platform.key_id, body).items()}

    assert opened(platform, headers, body).resource == RESOURCE


def test_both_keys_of_a_rotation_are_accepted(platform: Platform) -> None:
    body = envelope(sealed())

    by_key_id = opened(platform, signed(platform.key, platform.key_id, body), body)
    by_cert = opened(platform, signed(platform.cert_key, platform.cert_serial, body), body)

    assert by_key_id == by_cert


def test_a_certificate_serial_matches_in_either_case(platform: Platform) -> None:
    body = envelope(sealed())
    headers = signed(platform.cert_key, platform.cert_serial.lower(), body)

    assert opened(platform, headers, body).resource == RESOURCE


def test_a_platform_certificate_is_a_source_of_its_public_key(platform: Platform) -> None:
    body = envelope(sealed())
    from_cert = {platform.cert_serial: load_public_key(platform.cert_pem)}

    notification = open_notification(
        signed(platform.cert_key, platform.cert_serial, body),
        body,
        platform_keys=from_cert,
        apiv3_key=APIV3_KEY,
        now=NOW,
    )

    assert notification.resource == RESOURCE


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_a_timestamp_within_the_window_is_accepted(platform: Platform, skew: int) -> None:
    body = envelope(sealed())
    headers = signed(platform.key, platform.key_id, body, timestamp=NOW + skew)

    assert opened(platform, headers, body).id == "EV-2018-0001"


def test_missing_associated_data_means_empty(platform: Platform) -> None:
    resource = wn.seal_resource(APIV3_KEY, RESOURCE, associated_data="")
    del resource["associated_data"]
    body = envelope(resource)

    assert opened(platform, signed(platform.key, platform.key_id, body), body).resource == RESOURCE


def test_optional_envelope_fields_may_be_absent(platform: Platform) -> None:
    body = json.dumps(
        {"id": "EV-1", "event_type": "MALL_AUTH.ACTIVATE_CARD", "resource": sealed()}
    ).encode()

    notification = opened(platform, signed(platform.key, platform.key_id, body), body)

    assert (notification.create_time, notification.summary) == ("", "")


def test_seal_notification_is_what_open_notification_opens(platform: Platform) -> None:
    now = int(time.time())
    sealed_notification = wn.seal_notification(
        notification_id="EV-seal",
        event_type="MALL_REFUND.SUCCESS",
        resource=RESOURCE,
        apiv3_key=APIV3_KEY,
        private_key=platform.cert_key,
        serial=platform.cert_serial,
        timestamp=now,
        associated_data="mall_refund",
    )

    notification = open_notification(
        sealed_notification.headers,
        sealed_notification.body,
        platform_keys=platform.public_keys(),
        apiv3_key=APIV3_KEY,
        now=now,
    )

    assert (notification.id, notification.event_type) == ("EV-seal", "MALL_REFUND.SUCCESS")
    assert notification.resource == RESOURCE
    assert json.loads(sealed_notification.body)["resource_type"] == "encrypt-resource"


# -- who sent this? (Unauthenticated) -------------------------------------------------------


@pytest.mark.parametrize("header", wn.REQUIRED_HEADERS)
def test_each_missing_signature_header_is_refused(platform: Platform, header: str) -> None:
    body = envelope(sealed())
    headers = signed(platform.key, platform.key_id, body)
    del headers[header]

    error = refused(platform, headers, body)

    assert isinstance(error, Unauthenticated)
    assert error.code == "missing_signature_headers"
    assert header in error.message


def test_an_empty_signature_header_counts_as_missing(platform: Platform) -> None:
    body = envelope(sealed())
    headers = {**signed(platform.key, platform.key_id, body), "Wechatpay-Signature": ""}

    assert unauthenticated(platform, headers, body) == "missing_signature_headers"


def test_an_unknown_serial_is_refused(platform: Platform, stranger_key: PrivateKey) -> None:
    body = envelope(sealed())

    code = unauthenticated(platform, signed(stranger_key, "PUB_KEY_ID_STRANGER", body), body)

    assert code == "unknown_serial"


@pytest.mark.parametrize("skew", [-301, 301, -86_400, 86_400])
def test_a_timestamp_outside_the_window_is_stale(platform: Platform, skew: int) -> None:
    body = envelope(sealed())
    headers = signed(platform.key, platform.key_id, body, timestamp=NOW + skew)

    assert unauthenticated(platform, headers, body) == "stale_timestamp"


@pytest.mark.parametrize("timestamp", ["1.79e9", "-1790000000", " 1790000000", "now", "١٢٣"])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(
    platform: Platform, timestamp: str
) -> None:
    body = envelope(sealed())
    headers = {**signed(platform.key, platform.key_id, body), "Wechatpay-Timestamp": timestamp}

    assert unauthenticated(platform, headers, body) == "stale_timestamp"


def test_the_skew_window_is_configurable(platform: Platform) -> None:
    body = envelope(sealed())
    headers = signed(platform.key, platform.key_id, body, timestamp=NOW - 61)

    with pytest.raises(Unauthenticated) as caught:
        open_notification(
            headers,
            body,
            platform_keys=platform.public_keys(),
            apiv3_key=APIV3_KEY,
            now=NOW,
            max_skew_s=60,
        )

    assert caught.value.code == "stale_timestamp"


def test_a_body_changed_after_signing_is_refused(platform: Platform) -> None:
    body = envelope(sealed())
    headers = signed(platform.key, platform.key_id, body)

    assert unauthenticated(platform, headers, body.replace(b"EV-2018", b"EV-2019")) == (
        "bad_signature"
    )


@pytest.mark.parametrize("header", ["Wechatpay-Nonce", "Wechatpay-Timestamp"])
def test_a_signed_header_changed_after_signing_is_refused(platform: Platform, header: str) -> None:
    body = envelope(sealed())
    headers = signed(platform.key, platform.key_id, body)
    headers[header] = str(NOW + 1) if header == "Wechatpay-Timestamp" else "OTHER-NONCE"

    assert unauthenticated(platform, headers, body) == "bad_signature"


def test_a_signature_by_another_key_under_a_known_serial_is_refused(
    platform: Platform, stranger_key: PrivateKey
) -> None:
    body = envelope(sealed())

    assert unauthenticated(platform, signed(stranger_key, platform.key_id, body), body) == (
        "bad_signature"
    )


def test_the_other_rotation_key_does_not_stand_in_for_this_one(platform: Platform) -> None:
    body = envelope(sealed())

    headers = signed(platform.cert_key, platform.key_id, body)

    assert unauthenticated(platform, headers, body) == "bad_signature"


@pytest.mark.parametrize(
    "signature",
    [
        "WECHATPAY/SIGNTEST/" + base64.b64encode(b"probe" * 40).decode(),
        "WECHATPAY/SIGNTEST/",
        "not base64 at all!",
        base64.b64encode(b"\x00" * 256).decode(),
    ],
)
def test_probes_and_garbage_signatures_fail_verification(
    platform: Platform, signature: str
) -> None:
    body = envelope(sealed())
    headers = {**signed(platform.key, platform.key_id, body), "Wechatpay-Signature": signature}

    assert unauthenticated(platform, headers, body) == "bad_signature"


def test_a_body_that_is_not_utf8_cannot_carry_a_signature(platform: Platform) -> None:
    body = b"\xff\xfe{}"
    headers = signed(platform.key, platform.key_id, b"{}")

    assert unauthenticated(platform, headers, body) == "bad_signature"


def test_authenticity_is_checked_in_order(platform: Platform, stranger_key: PrivateKey) -> None:
    """Cheapest and most telling first; an unauthenticated body is never parsed."""
    garbage = b"not json"
    stale_and_unsigned = signed(stranger_key, platform.key_id, garbage, timestamp=NOW - 999)
    unknown_and_stale = {**stale_and_unsigned, "Wechatpay-Serial": "PUB_KEY_ID_NOPE"}

    assert unauthenticated(platform, unknown_and_stale, garbage) == "unknown_serial"
    assert unauthenticated(platform, stale_and_unsigned, garbage) == "stale_timestamp"
    assert (
        unauthenticated(platform, signed(stranger_key, platform.key_id, garbage), garbage)
        == "bad_signature"
    )


# -- what was sent? (InvalidInput, for authentic bodies) -----------------------------------


@pytest.mark.parametrize("body", [b"not json", b"{", b"", b"[]", b'"text"', b"42"])
def test_a_signed_body_that_is_not_a_json_object_is_refused(
    platform: Platform, body: bytes
) -> None:
    assert invalid(platform, body) == "invalid_json"


@pytest.mark.parametrize("field", ["id", "event_type", "resource"])
def test_a_missing_envelope_field_is_refused(platform: Platform, field: str) -> None:
    body = json.loads(envelope(sealed()))
    del body[field]

    assert invalid(platform, json.dumps(body).encode()) == "invalid_envelope"


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", ""), ("id", 42), ("event_type", None), ("resource", "ciphertext"), ("summary", 1)],
)
def test_an_envelope_field_of_the_wrong_shape_is_refused(
    platform: Platform, field: str, value: Any
) -> None:
    body = json.loads(envelope(sealed()))
    body[field] = value

    assert invalid(platform, json.dumps(body).encode()) == "invalid_envelope"


@pytest.mark.parametrize("field", ["algorithm", "ciphertext", "nonce"])
def test_a_missing_resource_field_is_refused(platform: Platform, field: str) -> None:
    resource = sealed()
    del resource[field]

    assert invalid(platform, envelope(resource)) == "invalid_envelope"


@pytest.mark.parametrize("algorithm", ["AEAD_SM4_GCM", "aead_aes_256_gcm", "NONE"])
def test_another_algorithm_is_unsupported(platform: Platform, algorithm: str) -> None:
    assert invalid(platform, envelope(sealed(algorithm=algorithm))) == "unsupported_algorithm"


def _flip(ciphertext: str, index: int) -> str:
    raw = bytearray(base64.b64decode(ciphertext))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_a_tampered_ciphertext_does_not_decrypt(platform: Platform) -> None:
    resource = sealed()

    assert invalid(platform, envelope(sealed(ciphertext=_flip(resource["ciphertext"], 0)))) == (
        "decrypt_failed"
    )


def test_a_tampered_tag_does_not_decrypt(platform: Platform) -> None:
    resource = sealed()

    assert invalid(platform, envelope(sealed(ciphertext=_flip(resource["ciphertext"], -1)))) == (
        "decrypt_failed"
    )


def test_other_associated_data_does_not_decrypt(platform: Platform) -> None:
    assert invalid(platform, envelope(sealed(associated_data="mall_refund"))) == ("decrypt_failed")


def test_another_nonce_does_not_decrypt(platform: Platform) -> None:
    assert invalid(platform, envelope(sealed(nonce="AAAAAAAAAAAA"))) == "decrypt_failed"


def test_another_apiv3_key_does_not_decrypt(platform: Platform) -> None:
    resource = wn.seal_resource("Z" * 32, RESOURCE, associated_data="mall_transaction")

    assert invalid(platform, envelope(resource)) == "decrypt_failed"


@pytest.mark.parametrize("ciphertext", ["not base64!", "", "QUJD"])
def test_a_malformed_ciphertext_does_not_decrypt(platform: Platform, ciphertext: str) -> None:
    resource = sealed()
    resource["ciphertext"] = ciphertext
    expected = "invalid_envelope" if not ciphertext else "decrypt_failed"

    assert invalid(platform, envelope(resource)) == expected


@pytest.mark.parametrize("plaintext", [b"not json", b"[1, 2]", b"\xff\xfe", b"null"])
def test_a_resource_that_is_not_a_json_object_is_refused(
    platform: Platform, plaintext: bytes
) -> None:
    resource = wn.seal_resource(APIV3_KEY, plaintext, associated_data="mall_transaction")

    assert invalid(platform, envelope(resource)) == "invalid_resource"
