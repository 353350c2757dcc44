"""Our crypto against an independent implementation: the published ``wechatpayv3`` SDK.

Only the SDK's crypto helpers (``rsa_sign``, ``rsa_verify``, ``aes_decrypt``,
``build_authorization``) are used; its call wrappers have known slips (WECHATPAY.md). The SDK
has no AES-GCM encryption of its own, so the reverse direction of the AEAD check uses the
``cryptography`` primitive exactly as the SDK's ``aes_decrypt`` reads it.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from wechatpay import aead, signing
from wechatpay.notifications import open_notification, seal_notification
from wechatpay.signing import PrivateKey
from wechatpayv3 import utils as sdk  # type: ignore[import-untyped]

APIV3_KEY = "sdkCrossCheck0123456789abcdefABC"
SERIAL = "PUB_KEY_ID_0000000000000000000000000042"


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_the_sdk_decrypts_what_we_encrypt() -> None:
    plaintext = json.dumps({"transaction_id": "42", "shop_name": "咖啡角"}, ensure_ascii=False)

    ciphertext = aead.encrypt(APIV3_KEY, "0123456789ab", "mall_transaction", plaintext.encode())

    assert sdk.aes_decrypt("0123456789ab", ciphertext, "mall_transaction", APIV3_KEY) == plaintext
    assert sdk.aes_decrypt("0123456789ab", ciphertext, "mall_refund", APIV3_KEY) is None


def test_we_decrypt_what_the_sdks_convention_encrypts() -> None:
    plaintext = '{"openid": "o-1"}'
    sealed = AESGCM(APIV3_KEY.encode("UTF-8")).encrypt(
        b"fedcba987654", plaintext.encode("UTF-8"), b"certificate"
    )
    ciphertext = base64.b64encode(sealed).decode()

    assert sdk.aes_decrypt("fedcba987654", ciphertext, "certificate", APIV3_KEY) == plaintext
    assert aead.decrypt(APIV3_KEY, "fedcba987654", "certificate", ciphertext) == (
        plaintext.encode()
    )


def test_the_sdk_verifies_our_signatures(key: PrivateKey) -> None:
    body = '{"id":"EV-1","summary":"商圈"}'
    signature = signing.sign(key, signing.response_message("1790000000", "N1", body))

    assert sdk.rsa_verify("1790000000", "N1", body, signature, key.public_key()) is True
    assert sdk.rsa_verify("1790000001", "N1", body, signature, key.public_key()) is False


def test_we_verify_the_sdks_signatures(key: PrivateKey) -> None:
    body = '{"id":"EV-2","summary":"退款"}'
    signature = sdk.rsa_sign(key, "1790000000\nN2\n" + body + "\n")

    assert signing.verify(
        key.public_key(), signing.response_message("1790000000", "N2", body), signature
    )
    assert not signing.verify(
        key.public_key(), signing.response_message("1790000000", "N3", body), signature
    )


def test_the_sdks_authorization_header_parses_and_verifies(key: PrivateKey) -> None:
    body = json.dumps({"transaction_id": "42", "earn_points": True})
    header = sdk.build_authorization(
        "/v3/businesscircle/points/notify", "POST", "1900000109", "5157F09EFDC096DE", key, body
    )

    auth = signing.parse_authorization(header)

    assert auth is not None
    assert (auth.mchid, auth.serial_no) == ("1900000109", "5157F09EFDC096DE")
    message = signing.request_message(
        "POST", "/v3/businesscircle/points/notify", auth.timestamp, auth.nonce_str, body
    )
    assert signing.verify(key.public_key(), message, auth.signature)


def test_our_authorization_header_has_the_sdks_shape(key: PrivateKey) -> None:
    ours = signing.authorize(
        mchid="1900000109",
        serial_no="5157F09EFDC096DE",
        private_key=key,
        method="GET",
        path="/v3/businesscircle/user-authorizations/o-1?appid=wx1",
        timestamp=1_790_000_000,
        nonce_str="FIXEDNONCE",
    )
    signature = sdk.rsa_sign(
        key, "GET\n/v3/businesscircle/user-authorizations/o-1?appid=wx1\n1790000000\nFIXEDNONCE\n\n"
    )

    assert ours.signature == signature  # PKCS#1 v1.5 is deterministic
    assert ours.header() == (
        'WECHATPAY2-SHA256-RSA2048 mchid="1900000109",nonce_str="FIXEDNONCE",'
        f'signature="{signature}",timestamp="1790000000",serial_no="5157F09EFDC096DE"'
    )


def test_a_notification_built_with_the_sdks_helpers_opens(key: PrivateKey) -> None:
    resource = {"transaction_id": "4200000001202611260001", "amount": 8800}
    nonce = "a1b2c3d4e5f6"
    sealed = AESGCM(APIV3_KEY.encode()).encrypt(
        nonce.encode(), json.dumps(resource).encode(), b"mall_transaction"
    )
    body = json.dumps(
        {
            "id": "EV-SDK",
            "create_time": "2026-11-26T10:00:00+08:00",
            "event_type": "MALL_TRANSACTION.SUCCESS",
            "resource_type": "encrypt-resource",
            "summary": "商圈支付结果通知",
            "resource": {
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(sealed).decode(),
                "associated_data": "mall_transaction",
                "nonce": nonce,
                "original_type": "mall_transaction",
            },
        },
        ensure_ascii=False,
    )
    now = int(time.time())
    headers = {
        "Wechatpay-Signature": sdk.rsa_sign(key, f"{now}\nSDKNONCE\n{body}\n"),
        "Wechatpay-Timestamp": str(now),
        "Wechatpay-Nonce": "SDKNONCE",
        "Wechatpay-Serial": SERIAL,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
    }

    notification = open_notification(
        headers,
        body.encode(),
        platform_keys={SERIAL: key.public_key()},
        apiv3_key=APIV3_KEY,
        now=now,
    )

    assert notification.resource == resource
    assert notification.event_type == "MALL_TRANSACTION.SUCCESS"


def test_the_sdks_helpers_open_a_notification_we_sealed(key: PrivateKey) -> None:
    resource = {"refund_id": "50300000012026112600001", "refund_amount": 100}
    now = int(time.time())
    sealed = seal_notification(
        notification_id="EV-OURS",
        event_type="MALL_REFUND.SUCCESS",
        resource=resource,
        apiv3_key=APIV3_KEY,
        private_key=key,
        serial=SERIAL,
        timestamp=now,
        associated_data="mall_refund",
    )
    h = sealed.headers
    body = sealed.body.decode()

    assert sdk.rsa_verify(
        h["Wechatpay-Timestamp"],
        h["Wechatpay-Nonce"],
        body,
        h["Wechatpay-Signature"],
        key.public_key(),
    )
    r = json.loads(body)["resource"]
    plaintext = sdk.aes_decrypt(r["nonce"], r["ciphertext"], r["associated_data"], APIV3_KEY)
    assert json.loads(plaintext) == resource
