"""Payments a tenant POS reports outside WeChat Pay (cash, card, paper receipt)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from kit.errors import InvalidInput

from member.domain.model import CapturedPayment, PaymentSource

POS_SOURCES = frozenset(
    {PaymentSource.POS_CASH, PaymentSource.POS_CARD, PaymentSource.POS_OTHER, PaymentSource.RECEIPT}
)
_RECEIPT = re.compile(r"^[\x21-\x7e]{1,64}$")  # printable ASCII, no spaces


def pos_transaction_id(store_id: str, receipt_no: str) -> str:
    """Deterministic per (store, receipt): the same receipt twice is one payment."""
    return f"pos:{store_id}:{receipt_no}"


@dataclass(frozen=True)
class ReportedPayment(CapturedPayment):
    """A POS-reported payment: no appid/openid (nothing to sync to WeChat), a receipt number."""

    receipt_no: str = ""

    def __post_init__(self) -> None:
        if not _RECEIPT.fullmatch(self.receipt_no):
            raise InvalidInput(
                "invalid_receipt_no", "receipt_no is 1-64 printable ASCII characters, no spaces"
            )
        if self.amount_fen <= 0:
            raise InvalidInput(
                "amount_not_positive", f"amount_fen must be > 0, got {self.amount_fen}"
            )


def reported_payment(
    *,
    store_id: str,
    receipt_no: str,
    amount_fen: int,
    paid_at: datetime,
    now: datetime,
    skew_s: float,
) -> ReportedPayment:
    if paid_at > now + timedelta(seconds=skew_s):
        raise InvalidInput("paid_at_in_future", f"paid_at {paid_at.isoformat()} is in the future")
    return ReportedPayment(
        event_id="",
        transaction_id=pos_transaction_id(store_id, receipt_no),
        appid="",
        mchid="",
        shop_number="",
        openid="",
        amount_fen=amount_fen,
        paid_at=paid_at,
        receipt_no=receipt_no,
    )
