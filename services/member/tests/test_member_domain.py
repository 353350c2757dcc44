"""Domain units: a captured payment refuses what the rest of the mall cannot act on."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from kit.errors import ErrorKind, InvalidInput
from member.domain.model import CapturedPayment


def _fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event_id": "evt-1",
        "transaction_id": "4200000000000000000000000001",
        "appid": "wxappid",
        "mchid": "1900000109",
        "shop_number": "SHOP-001",
        "openid": "o-shopper",
        "amount_fen": 12_345,
        "paid_at": datetime(2025, 11, 26, 3, 4, 5, tzinfo=UTC),
    }
    return fields | overrides


def test_a_complete_payment_is_accepted_as_given() -> None:
    payment = CapturedPayment(**_fields())

    assert payment.amount_fen == 12_345
    assert payment.openid == "o-shopper"
    with pytest.raises(dataclasses.FrozenInstanceError):
        payment.amount_fen = 1  # type: ignore[misc]


@pytest.mark.parametrize("field", ["transaction_id", "appid", "shop_number", "openid"])
def test_a_payment_missing_a_required_field_is_refused(field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        CapturedPayment(**_fields(**{field: ""}))

    assert caught.value.code == "payment_incomplete"
    assert caught.value.kind is ErrorKind.INVALID
    assert field in caught.value.message


def test_every_missing_field_is_named_at_once() -> None:
    with pytest.raises(InvalidInput) as caught:
        CapturedPayment(**_fields(appid="", openid=""))

    assert caught.value.code == "payment_incomplete"
    assert "appid" in caught.value.message
    assert "openid" in caught.value.message


@pytest.mark.parametrize("field", ["mchid", "event_id"])
def test_fields_the_mall_can_do_without_may_be_empty(field: str) -> None:
    assert getattr(CapturedPayment(**_fields(**{field: ""})), field) == ""


@pytest.mark.parametrize("amount_fen", [0, -1, -12_345])
def test_a_non_positive_amount_is_refused(amount_fen: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        CapturedPayment(**_fields(amount_fen=amount_fen))

    assert caught.value.code == "amount_not_positive"
    assert str(amount_fen) in caught.value.message


def test_one_fen_is_a_payment() -> None:
    assert CapturedPayment(**_fields(amount_fen=1)).amount_fen == 1
