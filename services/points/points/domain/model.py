"""Points domain: what a payment earns. Pure Python; no framework, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from kit.errors import InvalidInput

FEN_PER_YUAN = 100
#: Where a mall's day starts and ends (daily caps).
MALL_TIME_ZONE = ZoneInfo("Asia/Shanghai")


def mall_day(at: datetime) -> date:
    """The mall day (Asia/Shanghai) of an instant."""
    return at.astimezone(MALL_TIME_ZONE).date()


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
    #: Category of the tenant paid (member's directory); earning rules may be per category.
    tenant_category: str = ""

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

    def quote(self, payment: AttributedPayment) -> Quote:
        return Quote(self.points_for(payment), self.version)


@dataclass(frozen=True)
class Quote:
    """What the rules say a payment earns, before campaign budgets and daily caps."""

    #: Points of the base rule and its version.
    points: int
    version: str
    #: The campaign stacking on the base ('' for none), its version label and what it adds.
    campaign_id: str = ""
    campaign_version: str = ""
    extra: int = 0
    #: The campaign's budget (0 = unlimited) and the cap of the rules used (0 = none).
    budget: int = 0
    daily_cap: int = 0

    def label(self, granted_extra: int) -> str:
        """The rule versions that produced a credit: ``base@1`` or ``base@1+campaign@2``."""
        if self.campaign_id and granted_extra > 0:
            return f"{self.version}+{self.campaign_version}"
        return self.version


class EarningPolicy(Protocol):
    """What decides a payment's points (``points.domain.rules.RuleBook``, ``BaseRate``)."""

    def quote(self, payment: AttributedPayment) -> Quote: ...


@dataclass(frozen=True)
class Credit:
    """The outcome of crediting one payment."""

    payment: AttributedPayment
    points: int
    balance_after: int
    rule_version: str
    applied: bool  # False when this payment had been credited already
    #: The campaign whose points this credit holds and how many of them (from its budget).
    campaign_id: str = ""
    campaign_points: int = 0
    #: Points of this credit that settled the member's debt (``balance_after`` is after it).
    settled: int = 0

    @property
    def mall_day(self) -> date:
        return mall_day(self.payment.paid_at)


AccountKey = tuple[str, str]  # (mall_id, member_id)


def plan_credits(
    payments: Sequence[AttributedPayment],
    balances: Mapping[AccountKey, int],
    credited_before: Set[tuple[str, str]],
    rule: EarningPolicy,
    *,
    budgets_spent: Mapping[tuple[str, str], int] | None = None,
    earned_on_day: Mapping[tuple[str, str, date], int] | None = None,
    debts: Mapping[AccountKey, int] | None = None,
) -> list[Credit]:
    """Credit a batch in order against the opening balances.

    A payment credited before (``credited_before`` holds (mall_id, transaction_id)) or earlier
    in the same batch is not applied again; balances run per account through the batch so
    every entry's ``balance_after`` is exact.

    ``budgets_spent`` ((mall_id, campaign rule_id) → points its budget gave so far) and
    ``earned_on_day`` ((mall_id, member_id, mall day) → points credited that day) run through
    the batch the same way: a campaign adds ``min(extra, budget left)``; then the daily cap
    trims the total to what is left of it (the campaign's points first).

    ``debts`` (account → points owed) are settled first by the credits that follow: a credit
    of N points with D owed settles min(N, D), which does not reach the balance.
    """
    running = dict(balances)
    spent = dict(budgets_spent or {})
    earned = dict(earned_on_day or {})
    owed = dict(debts or {})
    seen = set(credited_before)
    credits = []
    for p in payments:
        key = (p.mall_id, p.transaction_id)
        account = (p.mall_id, p.member_id)
        if key in seen:
            credits.append(Credit(p, 0, running[account], "", applied=False))
            continue
        seen.add(key)
        quote = rule.quote(p)
        budget_key = (p.mall_id, quote.campaign_id)
        extra = max(0, quote.extra)
        if quote.campaign_id and quote.budget:
            extra = min(extra, max(0, quote.budget - spent.get(budget_key, 0)))
        points = max(0, quote.points) + extra
        day = (p.mall_id, p.member_id, mall_day(p.paid_at))
        if quote.daily_cap:
            points = min(points, max(0, quote.daily_cap - earned.get(day, 0)))
        granted_extra = max(0, points - max(0, quote.points))
        if quote.campaign_id:
            spent[budget_key] = spent.get(budget_key, 0) + granted_extra
        earned[day] = earned.get(day, 0) + points
        settled = min(points, owed.get(account, 0))
        if settled:
            owed[account] -= settled
        running[account] += points - settled
        credits.append(
            Credit(
                p,
                points,
                running[account],
                quote.label(granted_extra),
                applied=True,
                campaign_id=quote.campaign_id if granted_extra else "",
                campaign_points=granted_extra,
                settled=settled,
            )
        )
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
