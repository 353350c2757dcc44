"""The application factory, and ``serve``: the simulator on a port for as long as needed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web

from wechatpay_simulator.config import Settings
from wechatpay_simulator.delivery import Deliverer
from wechatpay_simulator.guard import control_errors, platform_api
from wechatpay_simulator.keys import DELIVERER, SETTINGS, STATE
from wechatpay_simulator.routes import setup_routes
from wechatpay_simulator.state import PlatformState

log = structlog.get_logger(__name__)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[control_errors, platform_api], client_max_size=1024**2)
    app[SETTINGS] = settings
    app[STATE] = PlatformState(merchants=dict(settings.merchant_map()))
    app.cleanup_ctx.append(_deliveries)
    setup_routes(app)
    return app


async def _deliveries(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client that delivers notifications; pending retries stop with the app."""
    async with aiohttp.ClientSession() as session:
        deliverer = Deliverer(app[SETTINGS], session)
        app[DELIVERER] = deliverer
        yield
        await deliverer.close()


@dataclass(frozen=True)
class Running:
    """A simulator that is serving: its base URL and its application (state, settings)."""

    url: str
    app: web.Application

    @property
    def state(self) -> PlatformState:
        return self.app[STATE]

    @property
    def settings(self) -> Settings:
        return self.app[SETTINGS]


@contextlib.asynccontextmanager
async def serve(
    settings: Settings, *, host: str = "127.0.0.1", port: int = 0, grace_s: float = 1.0
) -> AsyncIterator[Running]:
    """Serve until the block ends (``port=0``: a free port, see ``Running.url``)."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{shown}:{bound_port}"
        log.info("simulator_listening", url=url, platform_serial=settings.platform_serial)
        yield Running(url, app)
    finally:
        await runner.cleanup()
