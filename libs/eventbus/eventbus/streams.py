"""The JetStream streams: one per producing service, ``<producer>.>`` subjects."""

from __future__ import annotations

import contextlib

from kit.jetstream import ensure_stream
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

#: stream name → subject prefix. The PAYMENTS stream speaks for WeChat Pay (via the gateway).
STREAMS = {
    "PAYMENTS": "payments",
    "MEMBER": "member",
    "POINTS": "points",
    "COUPONS": "coupons",
    "PARKING": "parking",
}
#: stream name → the service that publishes into it, the only one that may change it (its NATS
#: user may update no other stream: deploy/nats/permissions.yaml).
OWNERS = {
    "PAYMENTS": "gateway",
    "MEMBER": "member",
    "POINTS": "points",
    "COUPONS": "coupons",
    "PARKING": "parking",
}


def stream_config(name: str, *, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[f"{STREAMS[name]}.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        # De-duplication by Nats-Msg-Id within this window; consumers' inboxes cover the rest
        # (WeChat Pay retries a notification for about a day).
        duplicate_window=3600.0,
    )


async def ensure_streams(
    js: JetStreamContext, *names: str, replicas: int = 1, service: str | None = None
) -> None:
    """Create the streams, and bring those ``service`` owns to this configuration (all of them
    when no service is named). A stream it only reads is created when absent, so that it may
    start before the owner, and otherwise left to the owner: after JETSTREAM_REPLICAS is raised,
    a reader starting first would be refused the update and fail to start."""
    for name in names or STREAMS:
        config = stream_config(name, replicas=replicas)
        if service is None or OWNERS[name] == service:
            await ensure_stream(js, config)
        else:
            with contextlib.suppress(BadRequestError):  # exists with another configuration
                await js.add_stream(config)
