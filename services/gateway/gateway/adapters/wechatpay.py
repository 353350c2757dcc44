"""WeChat Pay smart-mall notifications: the platform's resources, validated field by field.

The platform's field names are kept verbatim in the wire models so a reader can hold them
against the platform documentation (WECHATPAY.md). Signature verification and decryption
happen before this, in :mod:`wechatpay.notifications`; here a decrypted resource becomes a
domain notice, or an ``InvalidInput`` with a stable code (``missing_field``,
``invalid_field``, ``unsupported_event_type``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from kit.errors import InvalidInput
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from wechatpay.notifications import OpenedNotification

from gateway.domain.notifications import (
    AuthorizationNotice,
    AuthType,
    EventType,
    Notice,
    PaymentNotice,
    RefundNotice,
)

_ID = r"^[A-Za-z0-9_\-]{1,64}$"
M = TypeVar("M", bound=BaseModel)
#: ¥100 million: far above any real payment in a mall, far below int64 overflow.
MAX_FEN = 10_000_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, frozen=True)


class _AtAStore(_Strict):
    """Fields every notice about a store carries."""

    mchid: str = Field(min_length=1, max_length=32)
    sub_mchid: str = Field(default="", max_length=32)
    merchant_name: str = Field(default="", max_length=128)
    shop_name: str = Field(default="", max_length=128)
    shop_number: str = Field(min_length=1, max_length=64)
    appid: str = Field(min_length=1, max_length=32)
    openid: str = Field(min_length=1, max_length=128)
    transaction_id: str = Field(pattern=_ID)


class PaymentResource(_AtAStore):
    time_end: AwareDatetime
    amount: int = Field(gt=0, le=MAX_FEN, strict=True)
    commit_tag: str = Field(default="", max_length=64)


class RefundResource(_AtAStore):
    refund_id: str = Field(pattern=_ID)
    refund_time: AwareDatetime
    pay_amount: int = Field(gt=0, le=MAX_FEN, strict=True)
    refund_amount: int = Field(gt=0, le=MAX_FEN, strict=True)


class AuthorizationResource(_Strict):
    openid: str = Field(min_length=1, max_length=128)
    appid: str = Field(min_length=1, max_length=32)
    mchid: str = Field(min_length=1, max_length=32)
    code: str = Field(default="", max_length=64)
    auth_type: str = Field(default="", max_length=64)


class Notification(_Strict):
    """The unsigned demo route's body: an envelope whose resource is already plaintext."""

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


def _validated(model: type[M], resource: Any) -> M:
    try:
        return model.model_validate(resource)
    except ValidationError as exc:
        code, message = _first_error(exc)
        raise InvalidInput(code, f"resource.{message}") from None


def _payment(notification_id: str, resource: Any) -> PaymentNotice:
    r = _validated(PaymentResource, resource)
    return PaymentNotice(
        notification_id=notification_id,
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
        sub_mchid=r.sub_mchid,
    )


def _refund(notification_id: str, resource: Any) -> RefundNotice:
    r = _validated(RefundResource, resource)
    if r.refund_amount > r.pay_amount:
        raise InvalidInput("invalid_field", "resource.refund_amount: exceeds pay_amount")
    return RefundNotice(
        notification_id=notification_id,
        refund_id=r.refund_id,
        transaction_id=r.transaction_id,
        mchid=r.mchid,
        merchant_name=r.merchant_name,
        shop_name=r.shop_name,
        shop_number=r.shop_number,
        appid=r.appid,
        openid=r.openid,
        pay_amount_fen=r.pay_amount,
        refund_amount_fen=r.refund_amount,
        refunded_at=r.refund_time,
        sub_mchid=r.sub_mchid,
    )


def _time_or_none(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _authorization(notification_id: str, resource: Any, create_time: str) -> AuthorizationNotice:
    r = _validated(AuthorizationResource, resource)
    # A mode the platform adds later is still an authorisation: recorded as unspecified
    # rather than refused (a refusal would only make the platform retry it for a day).
    try:
        auth_type = AuthType(r.auth_type)
    except ValueError:
        auth_type = AuthType.UNSPECIFIED
    return AuthorizationNotice(
        notification_id=notification_id,
        appid=r.appid,
        mchid=r.mchid,
        openid=r.openid,
        card_code=r.code,
        auth_type=auth_type,
        changed_at=_time_or_none(create_time),
    )


def parse_notice(opened: OpenedNotification) -> Notice:
    """The notice a verified, decrypted notification carries."""
    if opened.event_type == EventType.PAYMENT:
        return _payment(opened.id, opened.resource)
    if opened.event_type == EventType.REFUND:
        return _refund(opened.id, opened.resource)
    if opened.event_type == EventType.AUTHORIZATION:
        return _authorization(opened.id, opened.resource, opened.create_time)
    raise InvalidInput(
        "unsupported_event_type", f"event_type {opened.event_type[:64]!r} is not handled"
    )


def parse_payment(body: Any) -> PaymentNotice:
    """A payment from the unsigned demo route's plaintext body, or InvalidInput."""
    try:
        envelope = Notification.model_validate(body)
    except ValidationError as exc:
        code, message = _first_error(exc)
        raise InvalidInput(code, message) from None
    if envelope.event_type != EventType.PAYMENT:
        raise InvalidInput(
            "unsupported_event_type", f"event_type {envelope.event_type!r} is not a mall payment"
        )
    return _payment(envelope.id, envelope.resource)
