"""NATS connection and idempotent JetStream stream setup."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def connect(url: str, *, name: str) -> AsyncIterator[Client]:
    """A connection that keeps reconnecting; drained (not dropped) on the way out."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=str(exc))

    nc = await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
    )
    try:
        yield nc
    finally:
        if not nc.is_closed:
            try:
                await nc.drain()
            except (nats.errors.Error, TimeoutError) as exc:  # server already gone
                log.warning("nats_drain_failed", error=repr(exc))
                await nc.close()


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to this configuration."""
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with another configuration (err 10058): update it in place.
        await js.update_stream(config)
