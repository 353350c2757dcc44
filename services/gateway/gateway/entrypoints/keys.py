"""Typed application state (aiohttp AppKeys)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.adapters.bus import PaymentsPublisher
from gateway.adapters.merchants import Merchants
from gateway.adapters.replays import ReplayGuard
from gateway.adapters.services import Backends
from gateway.service_layer.notifications import ShopDirectory


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Webhooks:
    """What the signed WeChat Pay webhook needs besides the publisher."""

    merchants: Merchants
    shops: ShopDirectory
    guard: ReplayGuard
    #: Whether the local directory copy has loaded (the KV mirror's initial replay is in).
    directory_ready: Callable[[], bool] = _always
    max_skew_s: float = 300.0
    clock: Callable[[], float] = time.time


PUBLISHER = web.AppKey("publisher", PaymentsPublisher)
BACKENDS = web.AppKey("backends", Backends)
WEBHOOKS = web.AppKey("webhooks", Webhooks)
