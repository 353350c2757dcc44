"""kit.logs: one JSON line per event with service, level and time; shopper ids masked."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from kit import context
from kit.logs import configure_logging, get_logger, mask

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging is process-wide: put structlog and the root logger back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("13812345678", "138****5678"),
        ("19987654321", "199****4321"),
        (OPENID, "oUpF***6o"),
        ("138123456789", "1381***89"),  # 12 digits: not a phone number, still masked
        ("abc123", "***"),
    ],
)
def test_mask(raw: str, masked: str) -> None:
    assert mask(raw) == masked


def test_json_lines_carry_service_level_time_and_mask_shopper_ids(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("points", level="info", fmt="json")
    log = get_logger("test")

    log.info(
        "member_joined",
        openid=OPENID,
        phone="13812345678",
        unionid="o6_bmasdasdsad6_2sgVt7hMZOPfL",
        points=12,
    )

    captured = capsys.readouterr()
    assert OPENID not in captured.err
    assert "13812345678" not in captured.err
    [line] = [json.loads(text) for text in captured.err.splitlines()]
    assert line["event"] == "member_joined"
    assert line["service"] == "points"
    assert line["level"] == "info"
    assert line["openid"] == "oUpF***6o"
    assert line["phone"] == "138****5678"
    assert line["unionid"] == "o6_b***fL"
    assert line["points"] == 12
    stamp = datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)  # now, not a constant


def test_phone_numbers_inside_the_message_are_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("member", fmt="json")

    get_logger("test").warning("lookup failed for 13812345678, retrying")

    [line] = _lines(capsys)
    assert line["event"] == "lookup failed for 138****5678, retrying"
    assert line["level"] == "warning"


def test_level_filters_and_correlation_context_is_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("coupons", level="warning", fmt="json")
    log = get_logger("test")

    with context.bound(correlation_id="corr-1", mall_id="mall-1"):
        log.info("chatty")
        log.error("coupon_redeem_failed")
    log.error("outside")

    lines = _lines(capsys)
    assert [line["event"] for line in lines] == ["coupon_redeem_failed", "outside"]
    assert lines[0]["correlation_id"] == "corr-1"
    assert lines[0]["mall_id"] == "mall-1"
    assert lines[0]["service"] == "coupons"
    assert "correlation_id" not in lines[1]
    assert lines[1]["service"] == "coupons"


def test_exceptions_are_rendered_into_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("parking", fmt="json")

    try:
        raise ValueError("plate unreadable")
    except ValueError:
        get_logger("test").exception("settle_failed")

    [line] = _lines(capsys)
    assert line["level"] == "error"
    assert "ValueError: plate unreadable" in line["exception"]
