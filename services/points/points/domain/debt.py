"""Negative balances: what a debit does when the balance cannot cover it. Pure Python.

Per mall (``mall_policies``): ``allow`` (the default) lets the balance go below zero and the
next credits bring it back up; ``debt`` stops the balance at zero and records the shortfall as
the member's debt, which the next credits settle first (``plan_credits``): the credit entry
shows the full points and a ``debt_settlement`` entry takes the settled part back, so
sum(ledger) = balance always.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kit.errors import InvalidInput


class NegativeBalance(StrEnum):
    ALLOW = "allow"
    DEBT = "debt"

    @classmethod
    def parse(cls, value: str) -> NegativeBalance:
        try:
            return cls(value)
        except ValueError:
            raise InvalidInput(
                "invalid_balance_policy", f"expected allow or debt, got {value!r}"
            ) from None


@dataclass(frozen=True)
class Debit:
    """How a debit of some points lands: taken from the balance, and owed."""

    taken: int
    debt: int = 0


def split_debit(policy: NegativeBalance, balance: int, points: int) -> Debit:
    """``allow``: all is taken (the balance may go below zero). ``debt``: what the balance
    holds is taken (none if it is below zero already), the rest is owed."""
    if policy is NegativeBalance.ALLOW or points <= 0:
        return Debit(points)
    taken = min(points, max(balance, 0))
    return Debit(taken, points - taken)
