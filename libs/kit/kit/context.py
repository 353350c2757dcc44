"""Correlation context carried across gRPC metadata, HTTP headers and NATS headers."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping

import structlog
from multidict import CIMultiDictProxy

#: Header / metadata names. gRPC metadata keys must be lower case.
CORRELATION_HEADER = "x-correlation-id"
MALL_HEADER = "x-mall-id"
TENANT_HEADER = "x-tenant-id"

_CONTEXT_KEYS = {
    CORRELATION_HEADER: "correlation_id",
    MALL_HEADER: "mall_id",
    TENANT_HEADER: "tenant_id",
}


def new_correlation_id() -> str:
    # Ties log lines together, guards nothing: no need for the OS's randomness (a syscall per
    # request at the gateway).
    return f"{random.getrandbits(128):032x}"


def from_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Pick the correlation fields out of any header mapping (case-insensitive)."""
    # aiohttp's headers answer any case themselves; other mappings are lowered once.
    get = (
        headers.get
        if isinstance(headers, CIMultiDictProxy)
        else {k.lower(): v for k, v in headers.items()}.get
    )
    found = {field: value for h, field in _CONTEXT_KEYS.items() if (value := get(h))}
    found.setdefault("correlation_id", new_correlation_id())
    return found


def current() -> dict[str, str]:
    """The correlation fields bound now, as headers to forward to the next hop."""
    bound = structlog.contextvars.get_contextvars()
    return {h: str(bound[f]) for h, f in _CONTEXT_KEYS.items() if bound.get(f)}


def correlation_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("correlation_id")
    return str(value) if value else None


@contextlib.contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Bind fields for the duration of one request or message."""
    with structlog.contextvars.bound_contextvars(**fields):
        yield
