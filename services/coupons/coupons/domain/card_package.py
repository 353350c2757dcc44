"""The WeChat card package mirror (卡包, platform merchant coupons 商家券): the rules. Pure.

The mall's coupons are the book of record. For each coupon of a flagged stock the mall
records what the platform should show (``wanted``: sent, used, deactivated) and what the
platform has confirmed (``platform``); the worker makes the one call that moves the platform a
step closer, until both agree. Every call carries a request number derived from the coupon,
so a retried call is the same call to the platform.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kit.errors import InvalidInput

NONE = "none"


class Wanted(enum.StrEnum):
    SENT = "sent"
    USED = "used"
    DEACTIVATED = "deactivated"


def settle(current: Wanted | None, new: Wanted) -> Wanted:
    """What a coupon should be at the platform after ``new``: ``sent`` never overrides a later
    wish; ``used`` and ``deactivated`` are final, the first one wins."""
    if current is None or (current is Wanted.SENT and new is not Wanted.SENT):
        return new
    return current


class Action(enum.StrEnum):
    SEND = "send"
    USE = "use"
    DEACTIVATE = "deactivate"
    #: A used coupon made usable again (退券).
    RETURN = "return"
    #: Revoked before it was ever sent: nothing to take back at the platform.
    SKIP = "skip"


def next_action(wanted: str, platform: str) -> Action | None:
    """The call that brings the platform closer to ``wanted``; None when nothing can
    (in line already, or the platform's coupon is final: deactivated, or used while the
    mall wants it deactivated)."""
    if wanted == platform or platform == Wanted.DEACTIVATED:
        return None
    if platform == Wanted.USED:
        return Action.RETURN if wanted == Wanted.SENT else None
    if platform == NONE:
        return Action.SKIP if wanted == Wanted.DEACTIVATED else Action.SEND
    return Action.USE if wanted == Wanted.USED else Action.DEACTIVATE


def after(action: Action, platform: str) -> str:
    """What the platform holds once ``action`` succeeded."""
    return {
        Action.SEND: Wanted.SENT.value,
        Action.USE: Wanted.USED.value,
        Action.DEACTIVATE: Wanted.DEACTIVATED.value,
        Action.SKIP: Wanted.DEACTIVATED.value,
        Action.RETURN: Wanted.SENT.value,
    }.get(action, platform)


def request_no(kind: str, mall_id: str, key: str) -> str:
    """A request number the platform de-duplicates on: 32 hex digits, stable per purpose."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"mall-circle/{kind}/{mall_id}/{key}").hex


def coupon_code(mall_id: str, coupon_id: str) -> str:
    """The coupon's code at the platform (MERCHANT_API mode: the mall chooses it)."""
    return request_no("coupon", mall_id, coupon_id)


@dataclass(frozen=True)
class StockTerms:
    """What the platform stock needs of the mall's stock."""

    title: str
    description: str
    kind: str  # fixed_amount, percent_off, exchange (parking has no platform kind)
    discount_fen: int
    threshold_fen: int
    percent_off: int
    max_coupons: int
    max_per_member: int
    available_from: datetime
    available_until: datetime


def stock_request(terms: StockTerms, *, mchid: str, out_request_no: str) -> dict[str, Any]:
    """The platform's create-stock request for a mall stock (refused if it has no match)."""
    minimum = terms.threshold_fen
    if terms.kind == "fixed_amount":
        stock_type, rule = (
            "NORMAL",
            {
                "fixed_normal_coupon": {
                    "discount_amount": terms.discount_fen,
                    "transaction_minimum": max(minimum, terms.discount_fen + 1),
                }
            },
        )
    elif terms.kind == "percent_off":
        stock_type, rule = (
            "DISCOUNT",
            {
                "discount_coupon": {
                    "discount_percent": 100 - terms.percent_off,
                    "transaction_minimum": minimum,
                }
            },
        )
    elif terms.kind == "exchange":
        stock_type, rule = (
            "EXCHANGE",
            {"exchange_coupon": {"exchange_price": 0, "transaction_minimum": minimum}},
        )
    else:
        raise InvalidInput(
            "not_mirrorable", f"{terms.kind} coupons have no WeChat merchant-coupon kind"
        )
    until = max(terms.available_until, terms.available_from + timedelta(minutes=1))
    return {
        "stock_name": terms.title[:21],
        "belong_merchant": mchid,
        "goods_name": (terms.description or terms.title)[:15],
        "stock_type": stock_type,
        "coupon_use_rule": {
            "coupon_available_time": {
                "available_begin_time": terms.available_from.isoformat(timespec="seconds"),
                "available_end_time": until.isoformat(timespec="seconds"),
            },
            **rule,
            "use_method": "OFF_LINE",
        },
        "stock_send_rule": {
            "max_coupons": terms.max_coupons,
            "max_coupons_per_user": terms.max_per_member or terms.max_coupons,
        },
        "out_request_no": out_request_no,
        "coupon_code_mode": "MERCHANT_API",
    }
