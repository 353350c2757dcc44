"""Commitment cards (支付分先享卡): the rules. Pure Python; no I/O.

A tenant offers "``purchases_required`` purchases at these stores within ``window_days`` days,
each of at least ``min_amount_fen`` (before the discount), and each gets ``discount_fen`` off
at checkout". A shopper accepts: the card copies the terms and its deadline is fixed. The POS
asks for the discount at checkout; the payment that follows counts. When the last committed
purchase counts the card is fulfilled; when the deadline passes first, it fails and the
discounts it gave are clawed back (through the shopper's WeChat Pay score).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from kit.errors import InvalidInput

MAX_PURCHASES = 100
MAX_WINDOW_DAYS = 366
MAX_STORES = 200
#: How long before its deadline an unfulfilled card's holder is reminded (once).
DEFAULT_REMINDER = timedelta(days=2)


class CardStatus(enum.StrEnum):
    ACTIVE = "active"
    FULFILLED = "fulfilled"
    FAILED = "failed"


@dataclass(frozen=True)
class OfferTerms:
    title: str
    store_ids: tuple[str, ...]
    purchases_required: int
    window_days: int
    min_amount_fen: int
    discount_fen: int

    def __post_init__(self) -> None:
        if not self.title.strip() or len(self.title) > 100:
            raise InvalidInput("invalid_title", "title is 1..100 characters")
        if not self.store_ids or len(self.store_ids) > MAX_STORES:
            raise InvalidInput("invalid_store_ids", f"store_ids lists 1..{MAX_STORES} stores")
        if any(not s for s in self.store_ids) or len(set(self.store_ids)) != len(self.store_ids):
            raise InvalidInput("invalid_store_ids", "store_ids are non-empty and distinct")
        if not 0 < self.purchases_required <= MAX_PURCHASES:
            raise InvalidInput(
                "invalid_purchases_required", f"purchases_required is 1..{MAX_PURCHASES}"
            )
        if not 0 < self.window_days <= MAX_WINDOW_DAYS:
            raise InvalidInput("invalid_window_days", f"window_days is 1..{MAX_WINDOW_DAYS}")
        if self.discount_fen <= 0:
            raise InvalidInput("invalid_discount", "discount_fen must be positive")
        if self.min_amount_fen <= self.discount_fen:
            raise InvalidInput(
                "invalid_min_amount",
                "min_amount_fen must exceed discount_fen (an order is never free)",
            )

    def deadline(self, accepted_at: datetime) -> datetime:
        return accepted_at + timedelta(days=self.window_days)


@dataclass(frozen=True)
class Card:
    """What the rules need of a card."""

    card_id: str
    store_ids: tuple[str, ...]
    purchases_required: int
    min_amount_fen: int
    discount_fen: int
    accepted_at: datetime
    deadline: datetime
    status: CardStatus
    purchases_made: int
    discount_given_fen: int

    def open_at(self, moment: datetime) -> bool:
        return (
            self.status is CardStatus.ACTIVE
            and self.accepted_at <= moment < self.deadline
            and self.purchases_made < self.purchases_required
        )

    def discount_for(self, store_id: str, order_amount_fen: int, now: datetime) -> int:
        """The discount the POS applies to an order of ``order_amount_fen`` (before it)."""
        if store_id not in self.store_ids or not self.open_at(now):
            return 0
        return self.discount_fen if order_amount_fen >= self.min_amount_fen else 0

    def counts(
        self, store_id: str, amount_paid_fen: int, discount_fen: int, paid_at: datetime
    ) -> bool:
        """Whether a payment counts: at one of the card's stores, within its window, and of at
        least the minimum before the discount applied to it (``discount_fen``, 0 if none)."""
        return (
            store_id in self.store_ids
            and self.open_at(paid_at)
            and amount_paid_fen + discount_fen >= self.min_amount_fen
        )


@dataclass(frozen=True)
class Progress:
    purchases_made: int
    discount_given_fen: int
    fulfilled: bool


def count_purchase(card: Card, discount_fen: int) -> Progress:
    """The card after one more counted purchase that got ``discount_fen`` off."""
    made = card.purchases_made + 1
    return Progress(made, card.discount_given_fen + discount_fen, made >= card.purchases_required)


def still_counts(card: Card, amount_fen: int, discount_fen: int, refunded_fen: int) -> bool:
    """Whether a counted purchase still counts after refunds: what is left paid, plus the
    discount it got, still reaches the minimum. Only an active card gives one back: a
    fulfilled card was earned, and a failed one has been settled."""
    if card.status is not CardStatus.ACTIVE:
        return True
    return amount_fen - refunded_fen + discount_fen >= card.min_amount_fen


def clawback_fen(card: Card) -> int:
    """What a card that failed owes back: every discount it gave, nothing more."""
    return card.discount_given_fen


def reminder_due(card: Card, now: datetime, before: timedelta = DEFAULT_REMINDER) -> bool:
    return card.status is CardStatus.ACTIVE and card.deadline - before <= now < card.deadline
