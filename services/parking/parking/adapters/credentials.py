"""parking's copy of the car-park credentials (hashes only) that car-park systems present.

Fed from member's DIRECTORY key-value bucket by ``kit.kvmirror.KvMirror``: ``apply`` gets every
entry, the current content first, then each change; ``credential.<mall>.<credential>`` →
``directory.Credential``. Nothing on the gate path asks member or the database who a caller is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from kit.kvmirror import DIRECTORY_BUCKET, KvMirror
from kit.lifecycle import Component
from mall.member.v1 import directory_pb2
from nats.js.client import JetStreamContext


@dataclass(frozen=True)
class CredentialEntry:
    mall_id: str
    credential_id: str
    car_park_id: str
    secret_hash: str
    revoked: bool


class Credentials:
    def __init__(self) -> None:
        self._entries: dict[str, CredentialEntry] = {}
        self._ready: asyncio.Event | None = None

    def mirrored(self, js: JetStreamContext) -> Component:
        """Component: keep this copy current from the DIRECTORY bucket."""

        async def run(stop: asyncio.Event) -> None:
            mirror = KvMirror(js, DIRECTORY_BUCKET, self.apply)
            self._ready = mirror.ready
            await mirror.run(stop)

        return run

    @property
    def ready(self) -> bool:
        """True once the bucket's content has been replayed (a copy filled by hand, with no
        mirror, is ready at once)."""
        return self._ready is None or self._ready.is_set()

    def apply(self, key: str, value: bytes | None) -> None:
        kind, _, rest = key.partition(".")
        if kind != "credential":
            return
        _, _, credential_id = rest.partition(".")
        if value is None:
            self._entries.pop(credential_id, None)
            return
        c = directory_pb2.Credential.FromString(value)
        self._entries[c.credential_id] = CredentialEntry(
            mall_id=c.mall_id,
            credential_id=c.credential_id,
            car_park_id=c.car_park_id,
            secret_hash=c.secret_hash,
            revoked=c.HasField("revoked_at"),
        )

    def get(self, credential_id: str) -> CredentialEntry | None:
        return self._entries.get(credential_id)
