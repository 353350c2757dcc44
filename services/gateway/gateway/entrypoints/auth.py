"""Who is calling ``/v1/me/**``: the gateway's own session token, nothing from the URL.

``Authorization: Bearer <access token>``; the SSE route also takes ``?access_token=``
because a browser ``EventSource`` cannot set headers (the canonical log line carries the path,
never the query, so the token stays out of logs).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.adapters.tokens import invalid_session
from gateway.entrypoints.keys import SESSION, SHOPPERS

ME = "/v1/me"
EVENTS = "/v1/me/events"


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.path == EVENTS:
        return request.query.get("access_token") or None
    return None


@web.middleware
async def shopper_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if SHOPPERS in request.app and (path == ME or path.startswith(ME + "/")):
        token = _bearer(request)
        if token is None:
            raise invalid_session("send Authorization: Bearer <access_token>")
        shoppers = request.app[SHOPPERS]
        session = shoppers.tokens.read_access(token)
        request[SESSION] = shoppers.merges.resolve(session) if shoppers.merges else session
    return await handler(request)
