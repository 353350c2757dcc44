"""Domain units: what a credit reports to WeChat Pay, and how long a retry waits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from points.domain.model import AttributedPayment, BaseRate, plan_credits
from points.domain.wechat_sync import (
    REMARK_NOT_ELIGIBLE,
    REMARK_UNDER_ONE_YUAN,
    SyncKind,
    report_for,
    retry_delay,
)
from points.service_layer.wechat_sync import SyncPolicy

MEMBER = str(uuid.UUID(int=1))


def paid(amount_fen: int, **overrides: Any) -> AttributedPayment:
    fields: dict[str, Any] = {
        "event_id": "evt-1",
        "mall_id": "demo-mall",
        "member_id": MEMBER,
        "transaction_id": "4200000000000000000000000001",
        "tenant_id": "coffee-corner",
        "amount_fen": amount_fen,
        "paid_at": datetime(2025, 11, 26, 6, 30, tzinfo=UTC),
        "appid": "wxappid",
        "openid": "o-shopper",
    }
    return AttributedPayment(**(fields | overrides))


def credited(payment: AttributedPayment, rule: BaseRate | None = None, opening: int = 7) -> Any:
    [credit] = plan_credits(
        [payment], {(payment.mall_id, payment.member_id): opening}, set(), rule or BaseRate()
    )
    return credit


def test_a_wechat_payment_that_earns_reports_its_points_and_the_balance() -> None:
    report = report_for(credited(paid(12_345)))

    assert report is not None
    assert (report.mall_id, report.transaction_id, report.kind) == (
        "demo-mall",
        "4200000000000000000000000001",
        SyncKind.CREDIT,
    )
    assert (report.openid, report.appid, report.sub_mchid) == ("o-shopper", "wxappid", None)
    assert (report.earn_points, report.increased_points, report.total_points) == (True, 123, 130)
    assert report.no_points_remarks is None


def test_a_payment_under_one_yuan_reports_no_points_and_why() -> None:
    report = report_for(credited(paid(99)))

    assert report is not None
    assert (report.earn_points, report.increased_points, report.total_points) == (False, 0, 7)
    assert report.no_points_remarks == REMARK_UNDER_ONE_YUAN == "金额不足1元"


def test_a_payment_no_rule_rewards_reports_no_points_with_a_general_reason() -> None:
    report = report_for(credited(paid(10_000), BaseRate(points_per_yuan=0, version="none")))

    assert report is not None
    assert (report.earn_points, report.no_points_remarks) == (False, REMARK_NOT_ELIGIBLE)


def test_a_pos_payment_is_not_reported() -> None:
    assert report_for(credited(paid(10_000, openid="", appid=""))) is None


def test_a_repeated_credit_is_not_reported_again() -> None:
    payment = paid(10_000)
    [_, repeat] = plan_credits([payment, payment], {("demo-mall", MEMBER): 0}, set(), BaseRate())

    assert report_for(repeat) is None


# -- retries --------------------------------------------------------------------------------


@given(
    st.integers(min_value=1, max_value=10_000),
    st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_a_retry_waits_half_to_all_of_its_capped_exponential_step(
    attempts: int, jitter: float
) -> None:
    step = min(600.0, 1.0 * 2 ** min(attempts - 1, 62))

    delay = retry_delay(attempts, base_s=1.0, cap_s=600.0, jitter=jitter)

    assert step / 2 <= delay <= step <= 600.0


def test_retries_back_off_exponentially_until_the_cap() -> None:
    waits = [retry_delay(n, base_s=1.0, cap_s=60.0, jitter=0.999) for n in range(1, 10)]

    assert [round(w) for w in waits] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_retry_follows_an_attempt() -> None:
    with pytest.raises(ValueError, match="at least one attempt"):
        retry_delay(0, base_s=1.0, cap_s=60.0, jitter=0.5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"send_timeout_s": 60.0, "lease_s": 60.0},
        {"send_timeout_s": 0.0},
        {"batch_size": 0},
        {"retry_base_s": 10.0, "retry_max_s": 1.0},
    ],
)
def test_a_policy_that_could_send_a_report_twice_at_once_is_refused(
    overrides: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match=r"must be|>="):
        SyncPolicy(**overrides)
