"""Post-payment coupons (支付后有礼, 复购券): which rules a payment meets, and what a refund
undoes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kit.errors import InvalidInput

from coupons.domain.claims import Channel, Claim


@dataclass(frozen=True)
class Rule:
    mall_id: str
    rule_id: str
    stock_id: str
    #: Tenant that owns the rule ("" for the mall's ops).
    owner_tenant: str
    min_amount_fen: int
    #: Payments at these tenants qualify; empty: the stock's own tenant (any for a mall stock).
    tenant_ids: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime | None
    enabled: bool
    version: int = 0
    #: Tenant of the rule's stock ("" for a mall stock); known when read for matching.
    stock_tenant: str = ""

    def __post_init__(self) -> None:
        if not self.mall_id or not self.rule_id or not self.stock_id:
            raise InvalidInput("missing_field", "mall_id, rule_id and stock_id are required")
        if len(self.rule_id) > 100:
            raise InvalidInput("invalid_rule_id", "rule_id is at most 100 characters")
        if self.min_amount_fen < 0:
            raise InvalidInput("invalid_amount", "min_amount_fen cannot be negative")
        if self.ends_at is not None and self.ends_at <= self.starts_at:
            raise InvalidInput("invalid_window", "ends_at must be after starts_at")
        if "" in self.tenant_ids or len(self.tenant_ids) > 200:
            raise InvalidInput("invalid_tenant_ids", "tenant_ids: at most 200 non-empty ids")

    def matches(self, payment: Payment) -> bool:
        if not self.enabled or payment.mall_id != self.mall_id:
            return False
        if payment.amount_fen < self.min_amount_fen:
            return False
        if payment.paid_at < self.starts_at:
            return False
        if self.ends_at is not None and payment.paid_at >= self.ends_at:
            return False
        if self.tenant_ids:
            return payment.tenant_id in self.tenant_ids
        return not self.stock_tenant or payment.tenant_id == self.stock_tenant


@dataclass(frozen=True)
class Payment:
    mall_id: str
    member_id: str
    transaction_id: str
    tenant_id: str
    store_id: str
    amount_fen: int
    paid_at: datetime
    tier_code: str = ""


@dataclass(frozen=True)
class Refund:
    mall_id: str
    refund_id: str
    transaction_id: str
    refund_amount_fen: int
    pay_amount_fen: int


def claims_for(payment: Payment, rules: list[Rule]) -> list[Claim]:
    """One claim per rule the payment meets; the request id makes a redelivery harmless."""
    return [
        Claim(
            mall_id=payment.mall_id,
            stock_id=rule.stock_id,
            member_id=payment.member_id,
            request_id=f"post-payment:{payment.transaction_id}:{rule.rule_id}",
            tier_code=payment.tier_code,
            channel=Channel.POST_PAYMENT,
            transaction_id=payment.transaction_id,
            rule_id=rule.rule_id,
        )
        for rule in rules
        if rule.matches(payment)
    ]
