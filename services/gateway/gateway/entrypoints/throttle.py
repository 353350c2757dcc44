"""Rate limits: per client address on every mini-program route, per shopper on ``/v1/me``.

Sliding-window counters (the ``limits`` library) kept in this process's memory, so each
replica counts for itself (N replicas admit up to N × the limit: size the limits per replica).
Over a limit: 429 ``rate_limited`` with ``Retry-After``. WeChat Pay's webhooks, the probes and
``/metrics`` are never limited (the platform retries on its own schedule; a limited payment
only arrives later). Behind a proxy (an ingress) the peer is the proxy: name the header it
sets (``RATE_LIMIT_CLIENT_HEADER``, e.g. ``X-Forwarded-For``; its last entry, the one the
proxy appended, is the client) — only when the gateway cannot be reached but through that
proxy, or clients could choose their own key. Malls' shared Wi-Fi puts many shoppers behind
one address, so the per-address limit is the generous one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway.entrypoints.keys import SESSION
from gateway.entrypoints.problems import problem

_EXEMPT = ("/wechatpay/", "/healthz", "/readyz", "/metrics")


@dataclass(frozen=True)
class RateLimits:
    """Limits as ``"<count>/<period>"`` (e.g. ``"200/second"``, ``"1000/minute"``); None: off."""

    per_ip: str | None = None
    per_member: str | None = None
    #: The header a trusted proxy puts the client's address in; None: the peer address.
    client_header: str | None = None


NO_LIMITS = RateLimits()


class Throttle:
    def __init__(self, limits: RateLimits) -> None:
        self._per_ip: RateLimitItem | None = parse(limits.per_ip) if limits.per_ip else None
        self._per_member: RateLimitItem | None = (
            parse(limits.per_member) if limits.per_member else None
        )
        self._client_header = limits.client_header
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    def _address(self, request: web.Request) -> str:
        if self._client_header:
            forwarded = request.headers.get(self._client_header, "")
            last = forwarded.rsplit(",", 1)[-1].strip()
            if last:
                return last
        return request.remote or ""

    async def _over(self, item: RateLimitItem | None, *key: str) -> web.Response | None:
        if item is None or await self._limiter.hit(item, *key):
            return None
        stats = await self._limiter.get_window_stats(item, *key)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        response = problem(429, "rate_limited", f"over {item}; retry in {retry_after} s")
        response.headers["Retry-After"] = str(retry_after)
        return response

    @web.middleware
    async def by_address(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_EXEMPT):
            return await handler(request)
        refused = await self._over(self._per_ip, "ip", self._address(request))
        return refused or await handler(request)

    @web.middleware
    async def by_member(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """After ``shopper_session``: the session is known (the token's mall and openid)."""
        session = request.get(SESSION)
        if session is not None:
            refused = await self._over(self._per_member, "member", session.mall_id, session.openid)
            if refused is not None:
                return refused
        return await handler(request)
