"""Units for parsing WeChat Pay mall notifications into domain notices."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from gateway.adapters.wechatpay import parse_notice, parse_payment
from gateway.domain.notifications import (
    AuthorizationNotice,
    AuthType,
    PaymentNotice,
    RefundNotice,
)
from kit.errors import ErrorKind, InvalidInput
from mall_testing.demo import DemoMall, payment_notification
from wechatpay.notifications import OpenedNotification

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


# -- decrypted resources of signed notifications (parse_notice) -----------------------------


def opened(event_type: str, resource: dict[str, Any], create_time: str = "") -> OpenedNotification:
    return OpenedNotification("EV-1", create_time, event_type, "", resource)


def refund_resource(**fields: Any) -> dict[str, Any]:
    return {
        "mchid": "1230000109",
        "merchant_name": "Coffee Corner",
        "shop_name": "Coffee Corner L1",
        "shop_number": "SHOP-001",
        "appid": "wx1",
        "openid": "o-1",
        "refund_time": "2026-11-27T09:30:00+08:00",
        "pay_amount": 8800,
        "refund_amount": 8800,
        "transaction_id": "4200000001202611260001",
        "refund_id": "50300000012026112700001",
        **fields,
    }


def parse_refusal(notification: OpenedNotification) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_notice(notification)
    return caught.value


def test_a_payment_notice_is_the_same_through_either_route() -> None:
    body = valid(sub_mchid="1900000300")

    notice = parse_notice(opened("MALL_TRANSACTION.SUCCESS", body["resource"]))

    assert notice == replace(parse_payment(body), notification_id="EV-1")
    assert isinstance(notice, PaymentNotice)
    assert notice.sub_mchid == "1900000300"


def test_a_refund_parses() -> None:
    notice = parse_notice(opened("MALL_REFUND.SUCCESS", refund_resource()))

    assert notice == RefundNotice(
        notification_id="EV-1",
        refund_id="50300000012026112700001",
        transaction_id="4200000001202611260001",
        mchid="1230000109",
        merchant_name="Coffee Corner",
        shop_name="Coffee Corner L1",
        shop_number="SHOP-001",
        appid="wx1",
        openid="o-1",
        pay_amount_fen=8800,
        refund_amount_fen=8800,
        refunded_at=datetime(2026, 11, 27, 1, 30, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    "field",
    ["refund_id", "transaction_id", "refund_amount", "pay_amount", "refund_time", "shop_number"],
)
def test_each_missing_refund_field_is_named(field: str) -> None:
    resource = refund_resource()
    del resource[field]

    error = parse_refusal(opened("MALL_REFUND.SUCCESS", resource))

    assert (error.code, f"resource.{field}" in error.message) == ("missing_field", True)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"refund_amount": 0}, "refund_amount"),
        ({"refund_amount": 8801}, "refund_amount"),
        ({"pay_amount": "8800"}, "pay_amount"),
        ({"refund_time": "2026-11-27T09:30:00"}, "refund_time"),
        ({"refund_id": "503 000"}, "refund_id"),
    ],
)
def test_a_refund_field_of_the_wrong_shape_is_invalid(fields: dict[str, Any], named: str) -> None:
    error = parse_refusal(opened("MALL_REFUND.SUCCESS", refund_resource(**fields)))

    assert (error.code, f"resource.{named}" in error.message) == ("invalid_field", True)


def test_an_authorization_parses_with_the_notifications_time() -> None:
    resource = {"openid": "o-1", "appid": "wx1", "mchid": "1900000109", "code": "C-1"}
    resource["auth_type"] = "REGISTERED_MODE"

    notice = parse_notice(
        opened("MALL_AUTH.ACTIVATE_CARD", resource, create_time="2026-11-26T10:00:00+08:00")
    )

    assert notice == AuthorizationNotice(
        notification_id="EV-1",
        appid="wx1",
        mchid="1900000109",
        openid="o-1",
        card_code="C-1",
        auth_type=AuthType.REGISTERED,
        changed_at=datetime(2026, 11, 26, 2, 0, tzinfo=UTC),
    )


@pytest.mark.parametrize("create_time", ["", "yesterday", "2026-11-26T10:00:00"])
def test_an_authorization_without_a_usable_time_has_none(create_time: str) -> None:
    resource = {"openid": "o-1", "appid": "wx1", "mchid": "1900000109"}

    notice = parse_notice(opened("MALL_AUTH.ACTIVATE_CARD", resource, create_time=create_time))

    assert isinstance(notice, AuthorizationNotice)
    assert (notice.changed_at, notice.card_code, notice.auth_type) == (
        None,
        "",
        AuthType.UNSPECIFIED,
    )


@pytest.mark.parametrize("field", ["openid", "appid", "mchid"])
def test_each_missing_authorization_field_is_named(field: str) -> None:
    resource = {"openid": "o-1", "appid": "wx1", "mchid": "1900000109"}
    del resource[field]

    error = parse_refusal(opened("MALL_AUTH.ACTIVATE_CARD", resource))

    assert (error.code, f"resource.{field}" in error.message) == ("missing_field", True)


@pytest.mark.parametrize("event_type", ["TRANSACTION.SUCCESS", "REFUND.SUCCESS", ""])
def test_another_event_type_is_unsupported(event_type: str) -> None:
    assert parse_refusal(opened(event_type, {})).code == "unsupported_event_type"
