"""What the platform sends: encrypted notification envelopes and the Wechatpay-* headers that
sign them (and every API response) with the platform key.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
import time
import uuid
from datetime import datetime
from typing import Any

from wechatpay import aead, signing

from wechatpay_simulator.config import Merchant, Settings
from wechatpay_simulator.state import Delivery, EventType, now, rfc3339

#: summary, associated_data and original_type of each notification the simulator sends.
_KINDS: dict[EventType, tuple[str, str]] = {
    EventType.PAYMENT: ("商圈支付结果通知", "transaction"),
    EventType.REFUND: ("商圈退款结果通知", "refund"),
    EventType.AUTHORIZATION: ("商圈会员积分服务授权结果通知", "mall_auth"),
}
SIGNATURE_PROBE_PREFIX = "WECHATPAY/SIGNTEST/"
_NONCE_ALPHABET = string.ascii_letters + string.digits


def to_json(value: Any) -> str:
    """Compact UTF-8 JSON, the way the platform writes bodies."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def aead_nonce() -> str:
    """12 letters and digits: the resource nonce (12 bytes, as AES-GCM wants)."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(12))


def platform_headers(settings: Settings, body: str, *, probe: bool = False) -> dict[str, str]:
    """Wechatpay-* headers over ``TIMESTAMP\\nNONCE\\nBODY\\n``, fresh for every send.

    ``probe`` signs nothing: the signature is a ``WECHATPAY/SIGNTEST/`` probe that a correct
    receiver must refuse.
    """
    timestamp = str(int(time.time()))
    nonce = signing.nonce()
    if probe:
        signature = SIGNATURE_PROBE_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    else:
        message = signing.response_message(timestamp, nonce, body)
        signature = signing.sign(settings.platform_key, message)
    return {
        "Wechatpay-Timestamp": timestamp,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": signature,
        "Wechatpay-Serial": settings.platform_serial,
        "Wechatpay-Signature-Type": signing.SCHEMA,
    }


def envelope(
    merchant: Merchant, event_type: EventType, resource: dict[str, Any], *, created_at: datetime
) -> tuple[str, str]:
    """(notification id, envelope JSON) with ``resource`` encrypted under the APIv3 key."""
    summary, kind = _KINDS[event_type]
    nonce = aead_nonce()
    notification_id = str(uuid.uuid4())
    body = {
        "id": notification_id,
        "create_time": rfc3339(created_at),
        "event_type": event_type.value,
        "resource_type": "encrypt-resource",
        "summary": summary,
        "resource": {
            "algorithm": aead.ALGORITHM,
            "ciphertext": aead.encrypt(merchant.apiv3_key, nonce, kind, to_json(resource).encode()),
            "associated_data": kind,
            "nonce": nonce,
            "original_type": kind,
        },
    }
    return notification_id, to_json(body)


def new_delivery(
    merchant: Merchant,
    event_type: EventType,
    resource: dict[str, Any],
    *,
    notify_url: str,
    probe: bool = False,
) -> Delivery:
    created_at = now()
    notification_id, body = envelope(merchant, event_type, resource, created_at=created_at)
    return Delivery(
        id=notification_id,
        event_type=event_type.value,
        mchid=merchant.mchid,
        notify_url=notify_url,
        body=body,
        resource=resource,
        created_at=created_at,
        probe=probe,
    )
