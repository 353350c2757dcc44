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
from gateway.adapters.spent import SpentRefreshTokens
from gateway.adapters.tokens import SessionTokens
from gateway.domain.shoppers import Session
from gateway.entrypoints.streams import Streams
from gateway.service_layer.card import CardReader
from gateway.service_layer.live import LiveHub
from gateway.service_layer.merges import MergedMembers
from gateway.service_layer.notifications import ShopDirectory
from gateway.service_layer.sessions import CodeExchange, Malls


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


@dataclass(frozen=True)
class Shoppers:
    """What the mini-program's API needs: login, sessions and live push."""

    malls: Malls
    wechat: CodeExchange
    tokens: SessionTokens
    spent: SpentRefreshTokens
    hub: LiveHub
    #: The member cards (fan-out, single flight, cache invalidated by the live feed).
    cards: CardReader
    #: The open SSE streams and their heartbeat (a component the composition root runs).
    streams: Streams
    directory_ready: Callable[[], bool] = _always
    #: Members merged into another, as heard on the live feed (sessions read as the survivor).
    merges: MergedMembers | None = None


PUBLISHER = web.AppKey("publisher", PaymentsPublisher)
BACKENDS = web.AppKey("backends", Backends)
WEBHOOKS = web.AppKey("webhooks", Webhooks)
SHOPPERS = web.AppKey("shoppers", Shoppers)
#: The session a valid ``Authorization: Bearer`` token speaks for (``/v1/me`` routes).
SESSION = web.RequestKey("session", Session)
