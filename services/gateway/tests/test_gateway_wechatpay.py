"""Units for parsing WeChat Pay mall payment notifications into a PaymentNotice."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from gateway.adapters.wechatpay import parse_payment
from gateway.domain.notifications import PaymentNotice
from kit.errors import ErrorKind, InvalidInput
from mall_testing.demo import DemoMall, payment_notification

REQUIRED_RESOURCE_FIELDS = [
    "mchid",
    "shop_number",
    "appid",
    "openid",
    "time_end",
    "amount",
    "transaction_id",
]


def valid(**resource: Any) -> dict[str, Any]:
    body = payment_notification(DemoMall(), openid="o-shopper-1", amount_fen=12_345)
    body["resource"].update(resource)
    return body


def refusal(body: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_payment(body)
    assert caught.value.kind is ErrorKind.INVALID
    return caught.value


def test_a_valid_notification_parses() -> None:
    mall = DemoMall()
    body = payment_notification(
        mall, openid="o-shopper-1", amount_fen=12_345, transaction_id="4200000000000000000000042"
    )

    notice = parse_payment(body)

    assert notice == PaymentNotice(
        notification_id=body["id"],
        transaction_id="4200000000000000000000042",
        mchid=mall.mchid,
        merchant_name=mall.stores[0].tenant_name,
        shop_name=mall.stores[0].tenant_name,
        shop_number=mall.stores[0].shop_number,
        appid=mall.appid,
        openid="o-shopper-1",
        amount_fen=12_345,
        paid_at=datetime.fromisoformat(body["resource"]["time_end"]),
        commit_tag="",
    )
    assert notice.paid_at.tzinfo is not None


def test_the_payment_time_keeps_its_offset() -> None:
    notice = parse_payment(valid(time_end="2025-11-26T14:30:00+08:00"))

    assert notice.paid_at == datetime(2025, 11, 26, 6, 30, tzinfo=UTC)
    assert notice.paid_at.utcoffset() == timedelta(hours=8)
    assert notice.paid_at.tzinfo == timezone(timedelta(hours=8))


def test_fields_the_gateway_does_not_know_are_ignored() -> None:
    body = valid(promotion_detail=[{"coupon_id": "1"}])
    body["extra"] = "ignored"

    assert parse_payment(body).amount_fen == 12_345


def test_optional_resource_fields_may_be_absent() -> None:
    body = valid()
    for field in ("merchant_name", "shop_name", "commit_tag"):
        del body["resource"][field]

    notice = parse_payment(body)

    assert (notice.merchant_name, notice.shop_name, notice.commit_tag) == ("", "", "")


@pytest.mark.parametrize("field", REQUIRED_RESOURCE_FIELDS)
def test_each_missing_resource_field_is_named(field: str) -> None:
    body = valid()
    del body["resource"][field]

    error = refusal(body)

    assert error.code == "missing_field"
    assert f"resource.{field}" in error.message


@pytest.mark.parametrize("field", ["id", "event_type", "resource"])
def test_each_missing_envelope_field_is_named(field: str) -> None:
    body = valid()
    del body[field]

    error = refusal(body)

    assert error.code == "missing_field"
    assert field in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", 0),
        ("amount", -100),
        ("amount", "12345"),
        ("amount", 123.45),
        ("amount", True),
        ("amount", None),
        ("amount", 10_000_000_001),
        ("openid", 12345),
        ("openid", ""),
        ("appid", ["wx"]),
        ("shop_number", "   "),
        ("mchid", "x" * 33),
        ("transaction_id", "4200 0000"),
        ("transaction_id", "x" * 65),
        ("transaction_id", ""),
        ("time_end", "yesterday"),
    ],
)
def test_a_resource_field_of_the_wrong_shape_is_invalid(field: str, value: Any) -> None:
    error = refusal(valid(**{field: value}))

    assert error.code == "invalid_field"
    assert f"resource.{field}" in error.message


def test_a_payment_time_without_an_offset_is_invalid() -> None:
    error = refusal(valid(time_end="2025-11-26T14:30:00"))

    assert error.code == "invalid_field"
    assert "time_end" in error.message


@pytest.mark.parametrize(
    "body",
    [
        [],
        "a string",
        None,
        42,
    ],
)
def test_a_body_that_is_not_an_object_is_invalid(body: Any) -> None:
    assert refusal(body).code == "invalid_field"


def test_a_resource_that_is_not_an_object_is_invalid() -> None:
    body = valid()
    body["resource"] = "ciphertext-not-decrypted"

    error = refusal(body)

    assert error.code == "invalid_field"
    assert "resource" in error.message


@pytest.mark.parametrize(
    "event_type", ["MALL_REFUND.SUCCESS", "MALL_AUTH.ACTIVATE_CARD", "TRANSACTION.SUCCESS"]
)
def test_an_event_other_than_a_mall_payment_is_unsupported(event_type: str) -> None:
    body = valid()
    body["event_type"] = event_type

    error = refusal(body)

    assert error.code == "unsupported_event_type"
    assert event_type in error.message


def test_the_event_type_is_checked_before_the_resource() -> None:
    """A refund carries a different resource: it must not be reported as a bad payment."""
    body = copy.deepcopy(valid())
    body["event_type"] = "MALL_REFUND.SUCCESS"
    body["resource"] = {"refund_id": "503000000000"}

    assert refusal(body).code == "unsupported_event_type"
