"""Refresh tokens that were already used: a JetStream key-value bucket, shared by replicas.

Refresh tokens rotate: each use gives a new pair, and the used token's id is written here
with ``create`` (first writer wins), so the same refresh token presented again, to any
replica, is refused. Entries expire with the bucket's TTL, set to the refresh tokens' lifetime:
by then the token has expired anyway.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
import structlog
from kit.errors import Unauthenticated, Unavailable
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)

BUCKET = "GATEWAY_REFRESH_TOKENS"


class SpentRefreshTokens:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(
        cls, js: JetStreamContext, *, ttl_s: float, replicas: int = 1
    ) -> SpentRefreshTokens:
        kv = await js.create_key_value(bucket=BUCKET, ttl=ttl_s, history=1, replicas=replicas)
        return cls(kv)

    async def spend(self, token_id: str) -> None:
        """Mark the token used; ``refresh_token_reused`` if it already was."""
        try:
            await self._kv.create(token_id, b"1")
        except nats.js.errors.KeyWrongLastSequenceError:
            log.warning("refresh_token_reused")
            raise Unauthenticated(
                "refresh_token_reused", "this refresh token was already used; log in again"
            ) from None
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("refresh_check_failed", error=repr(exc))
            raise Unavailable("session_store_unavailable", "please retry shortly") from None
