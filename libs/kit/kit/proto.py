"""Protobuf value conversions every service needs at its edges."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> Timestamp:
    """An aware datetime as a protobuf Timestamp (UTC; a naive one is taken as UTC).

    Arithmetic on the datetime instead of ``Timestamp.FromDatetime`` (which goes through
    ``calendar.timegm``): 0.6 µs instead of 2 µs, and a redemption's answer and event carry six.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    since = value - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def to_datetime(ts: Timestamp) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return ts.ToDatetime(tzinfo=UTC)
