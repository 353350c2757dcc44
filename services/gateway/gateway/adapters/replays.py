"""Which notification ids the gateway has seen, and what they said: a JetStream key-value bucket.

The gateway is stateless, so its memory of notification ids lives in JetStream, shared by
every replica. A key is the SHA-256 of the notification id (ids are the platform's, not
KV-safe); its value is the fingerprint of what the notification said. The first writer wins
(``create``); a later delivery of the same id must say the same thing, or it is refused.
Entries outlive the platform's retries (about a day) and then expire.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from kit.errors import Conflict, Unavailable
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)

BUCKET = "GATEWAY_NOTIFICATIONS"
TTL_S = 2 * 24 * 3600.0


def fingerprint(event_type: str, resource: Mapping[str, Any]) -> str:
    """What a notification says, independent of its encryption and signature.

    A re-encrypted (new nonce) or re-signed retry of the same notification is the same
    notification; any change to what it reports is not.
    """
    canonical = json.dumps(
        {"event_type": event_type, "resource": resource},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _key(notification_id: str) -> str:
    return hashlib.sha256(notification_id.encode()).hexdigest()


class ReplayGuard:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, *, replicas: int = 1) -> ReplayGuard:
        """The bucket, created (or found, with this configuration) at start."""
        kv = await js.create_key_value(bucket=BUCKET, ttl=TTL_S, history=1, replicas=replicas)
        return cls(kv)

    async def admit(self, notification_id: str, said: str) -> None:
        """Pass a first delivery, or a repeat that says the same; refuse a reused id.

        ``Conflict("notification_id_reused")`` for an id seen with other content;
        ``Unavailable`` when JetStream does not answer (the platform retries).
        """
        key = _key(notification_id)
        try:
            try:
                await self._kv.create(key, said.encode())
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                # Expired between the two calls: this delivery is a first one again.
                await self._kv.create(key, said.encode())
                return
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("replay_check_failed", error=repr(exc))
            raise Unavailable("replay_check_failed", "notification log unavailable") from None
        if entry.value != said.encode():
            raise Conflict(
                "notification_id_reused",
                f"notification {notification_id[:64]!r} was already received with other content",
            )
