"""Points domain: what a payment earns. Pure Python; no framework, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

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
    #: Member's tier when paying; earning rules may be per tier.
    tier_code: str = ""
    #: How the shopper paid (the contract's PaymentSource name, e.g. "PAYMENT_SOURCE_WECHAT_PAY").
    source: str = ""

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

    A mall's earning rules (``points.domain.rules``) replace it for the payments they match.
    """

    points_per_yuan: int = 1
    version: str = "base-1"

    def points_for(self, payment: AttributedPayment) -> int:
        return (payment.amount_fen // FEN_PER_YUAN) * self.points_per_yuan

    def earn(self, payment: AttributedPayment) -> tuple[int, str]:
        return self.points_for(payment), self.version


class EarningPolicy(Protocol):
    """What decides a payment's points: (points, the rule version that produced them)."""

    def earn(self, payment: AttributedPayment) -> tuple[int, str]: ...


@dataclass(frozen=True)
class Credit:
    """The outcome of crediting one payment."""

    payment: AttributedPayment
    points: int
    balance_after: int
    rule_version: str
    applied: bool  # False when this payment had been credited already


AccountKey = tuple[str, str]  # (mall_id, member_id)


def plan_credits(
    payments: Sequence[AttributedPayment],
    balances: Mapping[AccountKey, int],
    credited_before: Set[tuple[str, str]],
    rule: EarningPolicy,
) -> list[Credit]:
    """Credit a batch in order against the opening balances.

    A payment credited before (``credited_before`` holds (mall_id, transaction_id)) or earlier
    in the same batch is not applied again; balances run per account through the batch so
    every entry's ``balance_after`` is exact.
    """
    running = dict(balances)
    seen = set(credited_before)
    credits = []
    for p in payments:
        key = (p.mall_id, p.transaction_id)
        account = (p.mall_id, p.member_id)
        if key in seen:
            credits.append(Credit(p, 0, running[account], "", applied=False))
            continue
        seen.add(key)
        points, version = rule.earn(p)
        running[account] += points
        credits.append(Credit(p, points, running[account], version, applied=True))
    return credits


@dataclass(frozen=True)
class AttributedRefund:
    """A refund member tied to a payment and its member (the input of every reversal)."""

    event_id: str
    mall_id: str
    member_id: str
    transaction_id: str
    refund_id: str
    refund_amount_fen: int
    pay_amount_fen: int
    appid: str = ""
    openid: str = ""

    def __post_init__(self) -> None:
        if not self.mall_id or not self.member_id or not self.refund_id:
            raise InvalidInput("refund_incomplete", "mall, member and refund are required")
        if not 0 < self.refund_amount_fen <= self.pay_amount_fen:
            raise InvalidInput(
                "invalid_refund_amount",
                f"refund {self.refund_amount_fen} fen of a {self.pay_amount_fen} fen payment",
            )


def points_to_reverse(
    *,
    credited: int,
    pay_amount_fen: int,
    refunded_before_fen: int,
    reversed_before: int,
    refund_amount_fen: int,
) -> int:
    """Points a refund takes back: in proportion to the money, rounded down, computed on the
    running totals so that partial refunds adding up to the payment reverse every point."""
    refunded = min(pay_amount_fen, refunded_before_fen + refund_amount_fen)
    target = credited * refunded // pay_amount_fen
    return max(0, target - reversed_before)
