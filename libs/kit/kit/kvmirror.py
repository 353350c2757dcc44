"""A local, always-current copy of a JetStream key-value bucket.

This is how services keep their slice of the directory without calling ``member``: member
writes the ``DIRECTORY`` bucket, the others mirror it. A restarted process gets the whole
current content at once (the watcher replays it), then every change as it happens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats.errors
import nats.js.errors
import structlog
from nats.js.api import KeyValueConfig
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)

DIRECTORY_BUCKET = "DIRECTORY"
#: The service that writes it (the others mirror it).
DIRECTORY_OWNER = "member"


async def open_bucket(
    js: JetStreamContext, bucket: str, *, replicas: int | None = None, owned: bool = True
) -> KeyValue:
    """The bucket, created if it does not exist yet (idempotent).

    With ``replicas`` (what a process's JETSTREAM_REPLICAS says) it is created with that many
    copies, whichever process starts first on a clustered NATS; the bucket's writer
    (``owned``) also brings an existing one up to that many. A reader leaves an existing bucket
    as it is: its NATS user may not change it (deploy/nats/permissions.yaml)."""
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=1, replicas=replicas or 1)
        )
    if replicas is not None and owned:
        info = await js.stream_info(f"KV_{bucket}")
        if (info.config.num_replicas or 1) < replicas:
            info.config.num_replicas = replicas
            await js.update_stream(info.config)
    return kv


#: Receives each change: the key and its new value, or None when the key was deleted.
Apply = Callable[[str, bytes | None], None]


class KvMirror:
    """Feeds every entry of a bucket to ``apply``; ``ready`` is set once the initial content
    is in, so a process can refuse work until its copy is complete."""

    def __init__(self, js: JetStreamContext, bucket: str, apply: Apply) -> None:
        self._js = js
        self._bucket = bucket
        self._apply = apply
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Component: keep the copy current until asked to stop."""
        kv = await open_bucket(self._js, self._bucket)
        watcher = await kv.watchall()
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    continue
                if entry is None:  # the initial content has been replayed
                    self.ready.set()
                    log.info("kv_mirror_ready", bucket=self._bucket)
                    continue
                deleted = entry.operation in ("DEL", "PURGE") or entry.value is None
                self._apply(entry.key, None if deleted else entry.value)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
