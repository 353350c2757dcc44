"""The open Server-Sent Events streams of this process, and the one heartbeat for all of them.

A heartbeat (an SSE comment) every ``heartbeat_s`` keeps proxies from closing an idle stream
and finds clients that left: a stream whose heartbeat cannot be written, or whose client has
not taken the last ``max_buffer`` bytes (stalled), has its subscription closed, which ends its
view. One loop for every stream, rather than a timer task per stream, keeps an idle stream to
the connection, its view's one waiting task and its subscription (see bench/gateway_card.py
for the memory of 10,000 idle streams).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import ClientConnectionResetError, web

from gateway.service_layer.live import Subscription

log = structlog.get_logger(__name__)

PING = b": ping\n\n"
#: What a write to a client that left raises.
GONE = (ConnectionResetError, ClientConnectionResetError, RuntimeError)


def frame(
    data: str, *, event: str, event_id: str | None = None, retry_ms: int | None = None
) -> bytes:
    """One SSE message (``data`` is one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    tail = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"{head}event: {event}\ndata: {data}\n{tail}\n".encode()


class Streams:
    def __init__(self, *, heartbeat_s: float, max_buffer: int = 64 * 1024) -> None:
        self.heartbeat_s = heartbeat_s
        self._max_buffer = max_buffer
        self._open: dict[web.StreamResponse, tuple[web.Request, Subscription]] = {}

    def add(self, request: web.Request, response: web.StreamResponse, sub: Subscription) -> None:
        self._open[response] = (request, sub)

    def discard(self, response: web.StreamResponse) -> None:
        self._open.pop(response, None)

    def __len__(self) -> int:
        return len(self._open)

    async def beat(self) -> None:
        """One heartbeat to every open stream; end the ones whose client left or stalled."""
        for response, (request, sub) in list(self._open.items()):
            transport = request.transport
            if transport is None or transport.is_closing():
                sub.close()
                continue
            if transport.get_write_buffer_size() > self._max_buffer:
                log.info("sse_client_stalled")
                transport.abort()
                sub.close()
                continue
            try:
                await response.write(PING)
            except GONE:
                sub.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Component: beat until asked to stop."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_s)
            if not stop.is_set():
                await self.beat()
