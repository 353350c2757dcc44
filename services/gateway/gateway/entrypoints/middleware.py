"""Per-request context, error mapping and the one canonical log line."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from kit import context
from kit.errors import AppError
from kit.metrics import HTTP_LATENCY, HTTP_REQUESTS

from gateway.entrypoints.problems import from_error, problem

log = structlog.get_logger(__name__)
#: Codes for the errors aiohttp raises itself (no route, wrong method, body over the limit).
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# One child per (route, status): prometheus-client's labels() takes a lock on every call.
_requests = functools.cache(HTTP_REQUESTS.labels)
_latency = functools.cache(HTTP_LATENCY.labels)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    fields = context.from_headers(request.headers)
    started = time.perf_counter()
    status = 500
    with context.bound(**fields, method=request.method, path=request.path):
        try:
            response = await handler(request)
            status = response.status
        except AppError as exc:
            response = from_error(exc)
            status = response.status
            structlog.contextvars.bind_contextvars(code=exc.code)
        except web.HTTPException as exc:
            code = _CODES.get(exc.status) or exc.reason.lower().replace(" ", "_")
            response = problem(exc.status, code, exc.text or exc.reason)
            status = exc.status
        except Exception:
            log.exception("request_failed")
            response = problem(500, "internal", "internal error")
        finally:
            elapsed = time.perf_counter() - started
            # The route's pattern, not the path: openids and mall ids stay out of label values.
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            _requests(route, str(status)).inc()
            _latency(route).observe(elapsed)
            log.info("http", status=status, duration_ms=round(elapsed * 1000, 2))
        response.headers[context.CORRELATION_HEADER] = fields["correlation_id"]
        return response
