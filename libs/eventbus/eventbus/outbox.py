"""Write events in the caller's transaction; the relay publishes them later."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import Message
from kit import context
from kit.db import Connection

#: Postgres NOTIFY channel the relay listens on to publish without polling delay.
NOTIFY_CHANNEL = "outbox"


@dataclass(frozen=True)
class OutgoingEvent:
    subject: str
    payload: bytes
    mall_id: str
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: Correlation headers of the work that caused the event, forwarded to consumers.
    headers: dict[str, str] = field(default_factory=context.current)


def event(
    subject: str,
    message: Message,
    *,
    mall_id: str,
    event_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> OutgoingEvent:
    """An outgoing event from a contract message, its envelope filled in here once.

    Every event message starts with ``event_id``, ``mall_id`` and ``occurred_at`` (see
    protos/mall/*/v1/events.proto): a new id unless one is given, the mall, and now unless
    already set. ``headers`` default to the bound context; a batch handler passes each
    cause's own so correlation survives batching.
    """
    event_id = event_id or str(uuid.uuid4())
    fields = message.DESCRIPTOR.fields_by_name
    if "event_id" in fields:
        setattr(message, "event_id", event_id)  # noqa: B010 - a field of the concrete message
    if "mall_id" in fields:
        setattr(message, "mall_id", mall_id)  # noqa: B010
    if "occurred_at" in fields and not message.HasField("occurred_at"):
        getattr(message, "occurred_at").FromDatetime(datetime.now(UTC))  # noqa: B009
    return OutgoingEvent(
        subject,
        message.SerializeToString(),
        mall_id,
        event_id,
        context.current() if headers is None else headers,
    )


async def add_events(conn: Connection, events: Sequence[OutgoingEvent]) -> None:
    """Queue events inside the caller's open transaction (one round trip for many)."""
    if not events:
        return
    # The NOTIFY rides in the same statement: one round trip per transaction, not two.
    await conn.execute(
        """WITH queued AS (
               INSERT INTO outbox (event_id, mall_id, subject, payload, headers)
               SELECT e, m, s, p, h::jsonb
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])
                      AS t(e, m, s, p, h))
           SELECT pg_notify($6, '')""",
        [e.event_id for e in events],
        [e.mall_id for e in events],
        [e.subject for e in events],
        [e.payload for e in events],
        [json.dumps(e.headers) for e in events],
        NOTIFY_CHANNEL,
    )
