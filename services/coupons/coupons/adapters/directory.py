"""coupons' copy of the directory slice it needs: which tenant a store belongs to, and the
tenant credentials (hashes only) POS callers present.

Fed from member's DIRECTORY key-value bucket by ``kit.kvmirror.KvMirror`` (``apply`` gets every
entry, the current content first, then each change): ``store.<mall>.<store>`` →
``directory.Store``, ``credential.<mall>.<credential>`` → ``directory.Credential``. Nothing on
the redemption path asks member or the database who a caller is.
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
    tenant_id: str
    secret_hash: str
    revoked: bool


class Directory:
    def __init__(self) -> None:
        self._store_tenants: dict[tuple[str, str], str] = {}
        self._credentials: dict[str, CredentialEntry] = {}
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
        """True once the bucket's content has been replayed (a directory built by hand, with
        no mirror, is ready at once)."""
        return self._ready is None or self._ready.is_set()

    def apply(self, key: str, value: bytes | None) -> None:
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
                    secret_hash=c.secret_hash,
                    revoked=c.HasField("revoked_at"),
                )

    def store_tenant(self, mall_id: str, store_id: str) -> str | None:
        return self._store_tenants.get((mall_id, store_id))

    def credential(self, credential_id: str) -> CredentialEntry | None:
        return self._credentials.get(credential_id)
