"""``GET /v1/me/events``: Server-Sent Events for the session's member ("+N points" live).

Events: first ``ready`` (the stream is subscribed: re-read ``/v1/me/card`` now, anything
earlier is in it), then ``points`` with ``{"type": "points.credited" | "points.reversed",
"points", "balance", "transaction_id"}``, and the member's notices (``adapters.notices``):
``benefits`` (``benefits.changed``), ``guide`` (``guide.bound``), ``parking``
(``parking.started`` / ``parking.settled``), ``coupon`` (``coupon.issued`` / ``expiring`` /
``redeemed`` / ``revoked``); an event's name is its type's first word.
Every event has an ``id``; a client that reconnects
with ``Last-Event-ID`` (EventSource does) gets ``ready`` with ``"resumed": true`` and the
events it missed, in order, then the live ones — or, when this process cannot promise it
missed nothing (another replica, a restart, away too long: see ``service_layer.live``),
``ready`` with ``"resumed": false`` and a ``resync`` event: re-read the card and the ledger.
A heartbeat comment (``entrypoints.streams``: one loop for all streams) keeps proxies from
closing an idle stream and finds clients that left; the subscription is removed as soon as
the stream ends, whichever side ends it.
"""

from __future__ import annotations

import asyncio
import json

import structlog
from aiohttp import web

from gateway.entrypoints.keys import BACKENDS, SESSION, SHOPPERS
from gateway.entrypoints.streams import GONE, frame
from gateway.service_layer import sessions

log = structlog.get_logger(__name__)

#: How long the client should wait before reconnecting, in milliseconds.
RETRY_MS = 3000
#: How long one event may take to be written before the client counts as stalled.
SEND_TIMEOUT_S = 10.0


def _name(event: dict[str, object]) -> str:
    """The SSE event name: the type's first word (points, benefits, guide, parking)."""
    return str(event.get("type", "points")).partition(".")[0]


async def events(request: web.Request) -> web.StreamResponse:
    session, shoppers = request[SESSION], request.app[SHOPPERS]
    member_id = await sessions.member_id_of(session, request.app[BACKENDS])
    hub, streams = shoppers.hub, shoppers.streams
    last_event_id = request.headers.get("Last-Event-ID", "")[:64]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx-style proxies: do not hold events back
        }
    )
    with hub.subscribe(session.mall_id, member_id) as sub:
        # Same step as subscribing: nothing published in between is missed or sent twice.
        missed = hub.resume(session.mall_id, member_id, last_event_id) if last_event_id else None
        now_id = hub.now_id
        await response.prepare(request)
        streams.add(request, response, sub)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                ready = json.dumps({"type": "ready", "resumed": missed is not None})
                # Resuming, the client keeps its last id until a missed event replaces it.
                ready_id = None if missed is not None else now_id
                message = frame(ready, event="ready", event_id=ready_id, retry_ms=RETRY_MS)
                if last_event_id and missed is None:
                    message += frame(json.dumps({"type": "resync"}), event="resync")
                for event_id, event in missed or ():
                    message += frame(json.dumps(event), event=_name(event), event_id=event_id)
                await response.write(message)
            while (item := await sub.next()) is not None:  # None: gone, dropped, stopping
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await response.write(
                        frame(json.dumps(item[1]), event=_name(item[1]), event_id=item[0])
                    )
        except (*GONE, TimeoutError):
            pass  # the client left, or stalled past the send timeout
        finally:
            streams.discard(response)
    return response
