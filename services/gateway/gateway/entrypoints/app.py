"""The aiohttp application factory and the component that serves it."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from gateway.adapters.bus import PaymentsPublisher
from gateway.adapters.services import Backends
from gateway.entrypoints.auth import shopper_session
from gateway.entrypoints.keys import BACKENDS, PUBLISHER, SHOPPERS, WEBHOOKS, Shoppers, Webhooks
from gateway.entrypoints.middleware import request_context
from gateway.entrypoints.routes import setup_routes
from gateway.entrypoints.throttle import NO_LIMITS, RateLimits, Throttle

log = structlog.get_logger(__name__)


def create_app(
    publisher: PaymentsPublisher,
    backends: Backends,
    webhooks: Webhooks,
    *,
    accept_unsigned: bool = False,
    shoppers: Shoppers | None = None,
    limits: RateLimits = NO_LIMITS,
    max_body_bytes: int = 64 * 1024,
) -> web.Application:
    """The gateway; with ``shoppers``, also the mini-program's API (login, /v1/me, SSE).

    A body over ``max_body_bytes`` is refused with 413 ``body_too_large`` (before it is read
    when it says its length); ``limits`` are the per-address and per-shopper rate limits.
    """
    throttle = Throttle(limits)
    app = web.Application(
        middlewares=[request_context, throttle.by_address, shopper_session, throttle.by_member],
        client_max_size=max_body_bytes,
    )
    app[PUBLISHER] = publisher
    app[BACKENDS] = backends
    app[WEBHOOKS] = webhooks
    if shoppers is not None:
        app[SHOPPERS] = shoppers
        app.on_shutdown.append(_end_streams)
    setup_routes(app, accept_unsigned=accept_unsigned, shopper_api=shoppers is not None)
    if accept_unsigned:
        log.warning("unsigned_notifications_accepted", route="/wechatpay/notifications")
    return app


async def _end_streams(app: web.Application) -> None:
    """Open SSE streams end at shutdown, so in-flight requests can finish within the grace."""
    app[SHOPPERS].hub.close_all()


class HttpServer:
    def __init__(self, app: web.Application, *, host: str, port: int, grace_s: float) -> None:
        self.app = app
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace_s)
        self._host = host
        self._port = port
        self.port = 0

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_port=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("http_listening", port=self.port)
        return self.port

    async def run(self, stop: asyncio.Event) -> None:
        """Component: serve until asked to stop, then finish in-flight requests."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self._runner.cleanup()
