"""The slice of member's directory that services check callers against, held in memory.

member projects the directory into the ``DIRECTORY`` key-value bucket (``store.<mall>.<store>``
→ ``directory.Store``, ``credential.<mall>.<credential>`` → ``directory.Credential``, hashes of
secrets only); a serving process mirrors it with ``Directory.mirrored`` and answers from
memory, so no call asks member or the database who a caller is or whose a store is. The
other kinds of entry (malls, tenants, car parks) are skipped: nothing asks this copy for them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mall.member.v1 import directory_pb2
from nats.js.client import JetStreamContext

from kit.kvmirror import DIRECTORY_BUCKET, KvMirror
from kit.lifecycle import Component


@dataclass(frozen=True)
class CredentialEntry:
    """A credential as the caller checks need it. It speaks for a tenant's POS
    (``tenant_id``) or a car park's system (``car_park_id``); the other one is empty."""

    mall_id: str
    credential_id: str
    tenant_id: str
    car_park_id: str
    secret_hash: str
    revoked: bool


class Directory:
    def __init__(self) -> None:
        self._store_tenants: dict[tuple[str, str], str] = {}
        self._credentials: dict[str, CredentialEntry] = {}
        self._ready: asyncio.Event | None = None

    def mirrored(self, js: JetStreamContext) -> Component:
        """Component: keep this copy current from the DIRECTORY bucket."""
        mirror = KvMirror(js, DIRECTORY_BUCKET, self.apply)
        self._ready = mirror.ready  # not ready from here until the bucket is replayed
        return mirror.run

    @property
    def ready(self) -> bool:
        """True once the bucket's content has been replayed (a copy filled by hand through
        ``apply``, with no mirror, is ready at once)."""
        return self._ready is None or self._ready.is_set()

    def apply(self, key: str, value: bytes | None) -> None:
        """One entry of the bucket: its new value, or None when it was deleted."""
        kind, _, rest = key.partition(".")
        mall_id, _, entity_id = rest.partition(".")
        if kind == "store":
            if value is None:
                self._store_tenants.pop((mall_id, entity_id), None)
            else:
                store = directory_pb2.Store.FromString(value)
                self._store_tenants[(store.mall_id, store.store_id)] = store.tenant_id
        elif kind == "credential":
            if value is None:
                self._credentials.pop(entity_id, None)
            else:
                c = directory_pb2.Credential.FromString(value)
                self._credentials[c.credential_id] = CredentialEntry(
                    mall_id=c.mall_id,
                    credential_id=c.credential_id,
                    tenant_id=c.tenant_id,
                    car_park_id=c.car_park_id,
                    secret_hash=c.secret_hash,
                    revoked=c.HasField("revoked_at"),
                )

    def store_tenant(self, mall_id: str, store_id: str) -> str | None:
        """The tenant the store belongs to; None when the directory has no such store."""
        return self._store_tenants.get((mall_id, store_id))

    def credential(self, credential_id: str) -> CredentialEntry | None:
        return self._credentials.get(credential_id)
