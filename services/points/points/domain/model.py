"""Points domain: what a payment earns. Pure Python; no framework, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kit.errors import InvalidInput

FEN_PER_YUAN = 100


@dataclass(frozen=True)
class AttributedPayment:
    """A payment the member service has tied to a member (the input of every credit)."""

    event_id: str
    mall_id: str
    member_id: str
    transaction_id: str
    tenant_id: str
    amount_fen: int
    paid_at: datetime
    appid: str = ""
    openid: str = ""

    def __post_init__(self) -> None:
        if not self.mall_id or not self.member_id or not self.transaction_id:
            raise InvalidInput("payment_incomplete", "mall, member and transaction are required")
        if self.amount_fen <= 0:
            raise InvalidInput(
                "amount_not_positive", f"amount_fen must be > 0, got {self.amount_fen}"
            )


@dataclass(frozen=True)
class BaseRate:
    """The foundation rule: 1 point per whole yuan, fractions dropped.

    Effective-dated, per-tenant rules and campaigns replace this in the points rules work.
    """

    points_per_yuan: int = 1
    version: str = "base-1"

    def points_for(self, payment: AttributedPayment) -> int:
        return (payment.amount_fen // FEN_PER_YUAN) * self.points_per_yuan


@dataclass(frozen=True)
class Credit:
    """The outcome of crediting one payment."""

    payment: AttributedPayment
    points: int
    balance_after: int
    rule_version: str
    applied: bool  # False when this payment had been credited already
