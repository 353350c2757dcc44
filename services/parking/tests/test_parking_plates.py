"""Chinese plate validation and settlement checks (pure domain)."""

from __future__ import annotations

import pytest
from kit.errors import InvalidInput
from parking.domain.plates import Color, validate_plate
from parking.domain.sessions import PaymentMethod, settlement_anomaly


@pytest.mark.parametrize(
    ("typed", "color", "plate"),
    [
        ("粤B12345", Color.BLUE, "粤B12345"),
        ("粤b·1234学", Color.BLUE, "粤B1234学"),
        (" 沪A D12345 ", Color.GREEN, "沪AD12345"),
        ("京N88888", Color.YELLOW, "京N88888"),
        ("苏E12345", None, "苏E12345"),
    ],
)
def test_plates_are_normalised(typed: str, color: Color | None, plate: str) -> None:
    assert validate_plate(typed, color) == plate


@pytest.mark.parametrize(
    ("typed", "color"),
    [
        ("XB12345", Color.BLUE),  # no province
        ("粤812345", Color.BLUE),  # the city code is a letter
        ("粤B1234", Color.BLUE),  # too short
        ("粤BI2345", Color.BLUE),  # I is never used
        ("粤B123456", Color.BLUE),  # 6 characters is a new-energy plate
        ("粤B12345", Color.GREEN),  # a green plate has 6
        ("", None),
    ],
)
def test_what_is_not_a_plate_is_refused(typed: str, color: Color | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_plate(typed, color)
    assert caught.value.code == "invalid_plate"


@pytest.mark.parametrize(
    ("method", "payable", "paid", "flagged"),
    [
        (PaymentMethod.CASH, 1000, 1000, False),
        (PaymentMethod.CASH, 1000, 500, True),
        (PaymentMethod.PAID_AT_EXIT, 1000, 1200, False),
        (PaymentMethod.BENEFITS_ONLY, 0, 0, False),
        (PaymentMethod.BENEFITS_ONLY, 300, 0, True),
        (PaymentMethod.POINTS, 200, 0, True),
        (PaymentMethod.PAY_SCORE, 1500, 0, False),  # deducted after the exit
    ],
)
def test_settlements_that_leave_money_owed_are_flagged(
    method: PaymentMethod, payable: int, paid: int, flagged: bool
) -> None:
    assert (settlement_anomaly(method, payable, paid) is not None) == flagged
