"""``GET /v1/me/events``: Server-Sent Events for the session's member ("+N points" live).

Events: first ``ready`` (the stream is subscribed: re-read ``/v1/me/points`` now, anything
earlier is in the ledger), then ``points`` with ``{"type": "points.credited" |
"points.reversed", "points", "balance", "transaction_id"}``. A heartbeat comment every
``heartbeat_s`` keeps proxies from closing an idle stream and finds clients that left; the
subscription is removed as soon as the stream ends, whichever side ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import structlog
from aiohttp import web
from aiohttp_sse import sse_response

from gateway.entrypoints.keys import BACKENDS, SESSION, SHOPPERS
from gateway.service_layer import sessions

log = structlog.get_logger(__name__)

#: How long the client should wait before reconnecting, in milliseconds.
RETRY_MS = 3000


async def events(request: web.Request) -> web.StreamResponse:
    session, shoppers = request[SESSION], request.app[SHOPPERS]
    member_id = await sessions.member_id_of(session, request.app[BACKENDS])
    with shoppers.hub.subscribe(session.mall_id, member_id) as sub:
        async with sse_response(
            request, ping_interval=shoppers.heartbeat_s, headers={"Cache-Control": "no-store"}
        ) as sse:
            gone = asyncio.ensure_future(sse.wait())  # ends when a heartbeat cannot be written
            try:
                await sse.send(json.dumps({"type": "ready"}), event="ready", retry=RETRY_MS)
                while True:
                    following = asyncio.ensure_future(sub.next())
                    await asyncio.wait({following, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if not following.done():
                        following.cancel()
                        break
                    event = following.result()
                    if event is None:  # dropped as too slow, or the gateway is stopping
                        break
                    await sse.send(json.dumps(event), event="points")
            except (ConnectionResetError, TimeoutError):
                pass  # the client left, or stalled past the send timeout
            finally:
                gone.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await gone
    return sse
