"""``GET /v1/me/events``: Server-Sent Events for the session's member ("+N points" live).

Events: first ``ready`` (the stream is subscribed: re-read ``/v1/me/card`` now, anything
earlier is in it), then ``points`` with ``{"type": "points.credited" | "points.reversed",
"points", "balance", "transaction_id"}``. Every event has an ``id``; a client that reconnects
with ``Last-Event-ID`` (EventSource does) gets ``ready`` with ``"resumed": true`` and the
events it missed, in order, then the live ones — or, when this process cannot promise it
missed nothing (another replica, a restart, away too long: see ``service_layer.live``),
``ready`` with ``"resumed": false`` and a ``resync`` event: re-read the card and the ledger.
A heartbeat comment every ``heartbeat_s`` keeps proxies from closing an idle stream and
finds clients that left; the subscription is removed as soon as the stream ends, whichever
side ends it.
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
    hub = shoppers.hub
    last_event_id = request.headers.get("Last-Event-ID", "")[:64]
    with hub.subscribe(session.mall_id, member_id) as sub:
        # Same step as subscribing: nothing published in between is missed or sent twice.
        missed = hub.resume(session.mall_id, member_id, last_event_id) if last_event_id else None
        now_id = hub.now_id
        async with sse_response(
            request, ping_interval=shoppers.heartbeat_s, headers={"Cache-Control": "no-store"}
        ) as sse:
            # Ends when a heartbeat cannot be written; then the subscription ends too, which
            # wakes the loop below (one waiting task per stream, not one per event).
            gone = asyncio.ensure_future(sse.wait())
            gone.add_done_callback(lambda _: sub.close())
            try:
                ready = json.dumps({"type": "ready", "resumed": missed is not None})
                # Resuming, the client keeps its last id until a missed event replaces it.
                await sse.send(
                    ready, id=None if missed is not None else now_id, event="ready", retry=RETRY_MS
                )
                if last_event_id and missed is None:
                    await sse.send(json.dumps({"type": "resync"}), event="resync")
                for event_id, event in missed or ():
                    await sse.send(json.dumps(event), id=event_id, event="points")
                while True:
                    item = await sub.next()
                    if item is None:  # gone, dropped as too slow, or the gateway is stopping
                        break
                    await sse.send(json.dumps(item[1]), id=item[0], event="points")
            except (ConnectionResetError, TimeoutError):
                pass  # the client left, or stalled past the send timeout
            finally:
                gone.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await gone
    return sse
