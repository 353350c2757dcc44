"""The JetStream streams: one per producing service, ``<producer>.>`` subjects."""

from __future__ import annotations

from kit.jetstream import ensure_stream
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext

#: stream name → subject prefix. The PAYMENTS stream speaks for WeChat Pay (via the gateway).
STREAMS = {
    "PAYMENTS": "payments",
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


async def ensure_streams(js: JetStreamContext, *names: str, replicas: int = 1) -> None:
    for name in names or STREAMS:
        await ensure_stream(js, stream_config(name, replicas=replicas))
