"""kit.proto's conversions agree with protobuf's own, for any instant and any offset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from kit.proto import timestamp, to_datetime

instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(instants, offsets)
def test_timestamp_is_what_from_datetime_gives_and_converts_back(
    instant: datetime, offset: timezone
) -> None:
    local = instant.astimezone(offset)
    expected = Timestamp()
    expected.FromDatetime(local)

    assert timestamp(local) == expected
    assert to_datetime(timestamp(local)) == instant


def test_a_naive_datetime_is_taken_as_utc() -> None:
    naive = datetime(2026, 11, 26, 20, 41, 33, 123456)
    assert timestamp(naive) == timestamp(naive.replace(tzinfo=UTC))
    assert timestamp(naive).nanos == 123_456_000
