"""What WeChat Pay tells the mall, as the gateway understands it. Pure Python."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class EventType(enum.StrEnum):
    PAYMENT = "MALL_TRANSACTION.SUCCESS"
    REFUND = "MALL_REFUND.SUCCESS"
    AUTHORIZATION = "MALL_AUTH.ACTIVATE_CARD"


class AuthType(enum.StrEnum):
    """The kind of points authorisation a shopper gave (``auth_type``)."""

    UNSPECIFIED = ""
    REGISTERED = "REGISTERED_MODE"
    REGISTERED_AND_AUTHORIZED = "REGISTERED_AND_AUTHORIZATION_MODE"


@dataclass(frozen=True)
class PaymentNotice:
    """场内支付结果通知: a shopper paid at a store of the mall."""

    notification_id: str
    transaction_id: str
    mchid: str
    merchant_name: str
    shop_name: str
    shop_number: str
    appid: str
    openid: str
    amount_fen: int
    paid_at: datetime
    commit_tag: str
    sub_mchid: str = ""


@dataclass(frozen=True)
class RefundNotice:
    """场内退款通知: (part of) a payment at a store of the mall was refunded."""

    notification_id: str
    refund_id: str
    transaction_id: str
    mchid: str
    merchant_name: str
    shop_name: str
    shop_number: str
    appid: str
    openid: str
    pay_amount_fen: int
    refund_amount_fen: int
    refunded_at: datetime
    sub_mchid: str = ""


@dataclass(frozen=True)
class AuthorizationNotice:
    """积分服务授权结果通知: the shopper authorised mall points / activated the member card."""

    notification_id: str
    appid: str
    mchid: str
    openid: str
    card_code: str
    auth_type: AuthType
    #: When the platform says it happened (the notification's create_time); None if unsaid.
    changed_at: datetime | None


Notice = PaymentNotice | RefundNotice | AuthorizationNotice


def shop_of(notice: Notice) -> tuple[str, str] | None:
    """(appid, shop_number) of the store a notice happened at; None if it names no store."""
    if isinstance(notice, PaymentNotice | RefundNotice):
        return notice.appid, notice.shop_number
    return None
