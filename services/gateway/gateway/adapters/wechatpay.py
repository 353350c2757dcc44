"""Parsing and validating WeChat Pay smart-mall notifications.

The platform's field names are kept verbatim in the wire models so a reader can hold them
against the platform documentation. Signature verification and AES-GCM decryption of
``resource`` belong here too (WeChat Pay integration work); this cut accepts the decrypted
resource so the payment path can be proven end to end first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kit.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.domain.notifications import EventType, PaymentNotice

_ID = r"^[A-Za-z0-9_\-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, frozen=True)


class PaymentResource(_Strict):
    mchid: str = Field(min_length=1, max_length=32)
    merchant_name: str = Field(default="", max_length=128)
    shop_name: str = Field(default="", max_length=128)
    shop_number: str = Field(min_length=1, max_length=64)
    appid: str = Field(min_length=1, max_length=32)
    openid: str = Field(min_length=1, max_length=128)
    time_end: datetime
    amount: int = Field(gt=0, le=10_000_000_000, strict=True)
    transaction_id: str = Field(pattern=_ID)
    commit_tag: str = Field(default="", max_length=64)


class Notification(_Strict):
    id: str = Field(min_length=1, max_length=64)
    create_time: datetime | None = None
    event_type: str = Field(min_length=1)
    resource_type: str = ""
    summary: str = ""
    resource: dict[str, Any]


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    code = "missing_field" if err["type"] == "missing" else "invalid_field"
    return code, f"{where}: {err['msg']}"


def parse_payment(body: Any) -> PaymentNotice:
    """A validated payment notice, or InvalidInput with a stable code."""
    try:
        envelope = Notification.model_validate(body)
    except ValidationError as exc:
        code, message = _first_error(exc)
        raise InvalidInput(code, message) from None
    if envelope.event_type != EventType.PAYMENT:
        raise InvalidInput(
            "unsupported_event_type", f"event_type {envelope.event_type!r} is not a mall payment"
        )
    try:
        r = PaymentResource.model_validate(envelope.resource)
    except ValidationError as exc:
        code, message = _first_error(exc)
        raise InvalidInput(code, f"resource.{message}") from None
    if r.time_end.tzinfo is None:
        raise InvalidInput("invalid_field", "resource.time_end: needs a UTC offset (RFC 3339)")
    return PaymentNotice(
        notification_id=envelope.id,
        transaction_id=r.transaction_id,
        mchid=r.mchid,
        merchant_name=r.merchant_name,
        shop_name=r.shop_name,
        shop_number=r.shop_number,
        appid=r.appid,
        openid=r.openid,
        amount_fen=r.amount,
        paid_at=r.time_end,
        commit_tag=r.commit_tag,
    )
