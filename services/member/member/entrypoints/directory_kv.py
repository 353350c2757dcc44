"""Project the directory events into the DIRECTORY key-value bucket the other services mirror.

Fed by member's own ``member.directory.*`` events (outbox → stream → this consumer), so a
directory change reaches the bucket exactly when it has committed, and is retried until it
does. Puts are idempotent: a redelivery writes the same value again.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from eventbus.consumer import Delivery, Handler
from kit.db import Connection
from mall.member.v1 import events_pb2
from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)

DIRECTORY_CHANGED = "member.directory.>"


def directory_key(kind: str, mall_id: str, entity_id: str = "") -> str:
    """``mall.<mall>``, ``tenant.<mall>.<tenant>``, ``store.<mall>.<store>`` (KV-safe slugs)."""
    return f"{kind}.{mall_id}" + (f".{entity_id}" if entity_id else "")


def _entry(d: Delivery) -> tuple[str, bytes] | None:
    kind = d.subject.rsplit(".", 1)[-1]
    if kind == "mall_upserted":
        mall = d.decode(events_pb2.MallUpserted).mall
        return directory_key("mall", mall.mall_id), mall.SerializeToString()
    if kind == "tenant_upserted":
        tenant = d.decode(events_pb2.TenantUpserted).tenant
        return (
            directory_key("tenant", tenant.mall_id, tenant.tenant_id),
            tenant.SerializeToString(),
        )
    if kind == "store_upserted":
        store = d.decode(events_pb2.StoreUpserted).store
        return directory_key("store", store.mall_id, store.store_id), store.SerializeToString()
    if kind == "car_park_upserted":
        park = d.decode(events_pb2.CarParkUpserted).car_park
        return (
            directory_key("car_park", park.mall_id, park.car_park_id),
            park.SerializeToString(),
        )
    if kind == "credential_upserted":
        # Hashes only (and revocations): each service checks its callers locally.
        c = d.decode(events_pb2.CredentialUpserted).credential
        return directory_key("credential", c.mall_id, c.credential_id), c.SerializeToString()
    return None


def directory_projection(kv: KeyValue) -> Handler:
    async def on_directory_changed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            entry = _entry(d)
            if entry is None:
                log.info("directory_event_not_projected", subject=d.subject)
                continue
            await kv.put(*entry)

    return on_directory_changed
