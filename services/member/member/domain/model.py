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
    POS_OTHER = "pos_other"
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
    #: The tenant's category in the directory (PaymentAttributed.tenant_category).
    category: str = ""


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


@dataclass(frozen=True)
class CapturedRefund:
    """A refund as the platform reported it (场内退款通知)."""

    event_id: str
    refund_id: str
    transaction_id: str
    appid: str
    openid: str
    refund_amount_fen: int
    refunded_at: datetime

    def __post_init__(self) -> None:
        missing = [f for f in ("refund_id", "transaction_id", "appid") if not getattr(self, f)]
        if missing:
            raise InvalidInput("refund_incomplete", f"missing {', '.join(missing)}")
        if self.refund_amount_fen <= 0:
            raise InvalidInput(
                "amount_not_positive",
                f"refund_amount_fen must be > 0, got {self.refund_amount_fen}",
            )


@dataclass(frozen=True)
class RecordedPayment:
    """What member knows of a payment a refund refers to."""

    mall_id: str
    transaction_id: str
    member_id: str
    tenant_id: str
    store_id: str
    amount_fen: int
    source: PaymentSource
    refunded_fen: int  # by refunds attributed before this one


def check_refund(payment: RecordedPayment, refund_amount_fen: int) -> None:
    """Refunds of one payment never add up to more than was paid."""
    if payment.refunded_fen + refund_amount_fen > payment.amount_fen:
        raise InvalidInput(
            "refund_exceeds_payment",
            f"refunds of {payment.transaction_id} would reach "
            f"{payment.refunded_fen + refund_amount_fen} fen of {payment.amount_fen} paid",
        )
