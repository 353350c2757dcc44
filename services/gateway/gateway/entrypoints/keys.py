"""Typed application state (aiohttp AppKeys)."""

from __future__ import annotations

from aiohttp import web

from gateway.adapters.bus import PaymentsPublisher
from gateway.adapters.services import Backends

PUBLISHER = web.AppKey("publisher", PaymentsPublisher)
BACKENDS = web.AppKey("backends", Backends)
