"""What WeChat Pay tells the mall, as the gateway understands it. Pure Python."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class EventType(enum.StrEnum):
    PAYMENT = "MALL_TRANSACTION.SUCCESS"
    REFUND = "MALL_REFUND.SUCCESS"
    AUTHORIZATION = "MALL_AUTH.ACTIVATE_CARD"


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
