"""Member domain: who paid, and the payment the rest of the mall learns of."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from kit.errors import InvalidInput


class JoinChannel(enum.StrEnum):
    PAYMENT = "payment"  # 支付即会员
    MINI_PROGRAM = "mini_program"
    POS = "pos"


class PaymentSource(enum.StrEnum):
    WECHAT_PAY = "wechat_pay"
    POS_CASH = "pos_cash"
    POS_CARD = "pos_card"
    RECEIPT = "receipt"


@dataclass(frozen=True)
class CapturedPayment:
    """A payment as the platform reported it, before we know the member."""

    event_id: str
    transaction_id: str
    appid: str
    mchid: str
    shop_number: str
    openid: str
    amount_fen: int
    paid_at: datetime

    def __post_init__(self) -> None:
        missing = [
            f for f in ("transaction_id", "appid", "shop_number", "openid") if not getattr(self, f)
        ]
        if missing:
            raise InvalidInput("payment_incomplete", f"missing {', '.join(missing)}")
        if self.amount_fen <= 0:
            raise InvalidInput(
                "amount_not_positive", f"amount_fen must be > 0, got {self.amount_fen}"
            )


@dataclass(frozen=True)
class Store:
    mall_id: str
    store_id: str
    tenant_id: str


@dataclass(frozen=True)
class Member:
    mall_id: str
    member_id: str
    tier_code: str
    joined_now: bool = False


@dataclass(frozen=True)
class Attribution:
    """A payment tied to a member at a store: what ``member.payment.attributed`` says."""

    payment: CapturedPayment
    store: Store
    member: Member
    source: PaymentSource = PaymentSource.WECHAT_PAY
    new: bool = True  # False if this transaction had been attributed already
