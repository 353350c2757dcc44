"""Protobuf value conversions every service needs at its edges."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime) -> Timestamp:
    """An aware datetime as a protobuf Timestamp (UTC)."""
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def to_datetime(ts: Timestamp) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return ts.ToDatetime(tzinfo=UTC)
