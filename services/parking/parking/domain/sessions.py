"""Parking sessions: one stay of a vehicle, from entry to settled exit, as the rules see it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Status(enum.Enum):
    OPEN = "open"
    SETTLED = "settled"
    #: Closed without an exit: the same plate entered again (the exit camera missed it).
    ABANDONED = "abandoned"


class PaymentMethod(enum.Enum):
    BENEFITS_ONLY = "benefits_only"
    POINTS = "points"
    PAY_SCORE = "pay_score"
    PAID_AT_EXIT = "paid_at_exit"
    CASH = "cash"


class AnomalyKind(enum.Enum):
    """What a gate reported that a person should look at."""

    EXIT_WITHOUT_ENTRY = "exit_without_entry"
    ENTRY_WHILE_INSIDE = "entry_while_inside"
    UNDERPAID = "underpaid"


@dataclass(frozen=True)
class Session:
    mall_id: str
    session_id: str
    car_park_id: str
    plate_number: str
    plate_color: str
    member_id: str | None
    status: Status
    entered_at: datetime
    entry_missing: bool = False
    pay_score: bool = False
    exited_at: datetime | None = None
    gross_fee_fen: int = 0
    discount_fen: int = 0
    paid_fen: int = 0
    payment_method: PaymentMethod | None = None
    settled_quote_id: str | None = None
    #: Settled by the member before leaving (the quote), when, and until when the exit gate
    #: lets the car out without payment.
    prepaid_quote_id: str | None = None
    prepaid_at: datetime | None = None
    prepaid_until: datetime | None = None

    @property
    def prepaid(self) -> bool:
        return self.prepaid_quote_id is not None


def settlement_anomaly(method: PaymentMethod, payable_fen: int, paid_fen: int) -> str | None:
    """Why a settlement needs a look, or None. Pay-score collects what is payable after the
    exit; every other way must have covered the quote at the gate."""
    if method != PaymentMethod.PAY_SCORE and paid_fen < payable_fen:
        return f"{method.value}: paid {paid_fen} fen of {payable_fen} fen payable"
    return None
