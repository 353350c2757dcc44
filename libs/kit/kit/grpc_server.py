"""grpc.aio server bootstrap shared by every service.

Health follows the real dependencies (PostgreSQL, NATS) instead of always saying SERVING;
reflection is on so that grpcurl and ops tools can discover the API; shutdown flips health
to NOT_SERVING first so load balancers stop routing before in-flight calls are drained.

Connections live at most ``max_connection_age_s`` (GRPC_MAX_CONNECTION_AGE_S, 5 min; gRPC
adds +/-10 % jitter so clients do not all reconnect together): then the server sends GOAWAY,
lets the calls in flight finish for up to the default deadline (which caps every handler),
and closes. The client reconnects and resolves the target's name again, so replicas added
since (a scale-out) start taking calls within one age even from long-lived clients
(kit.grpc_client balances over every address it gets).
Clients' keepalive pings (kit.grpc_client: every 30 s, with or without calls) are accepted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health as _health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kit import context
from kit.errors import AppError
from kit.grpc_errors import to_status
from kit.lifecycle import sleep_or_stop
from kit.metrics import GRPC_LATENCY, GRPC_REQUESTS

log = structlog.get_logger(__name__)
health_aio: Any = _health.aio  # type: ignore[attr-defined]  # the asyncio servicer

HealthCheck = Callable[[], Awaitable[bool]]
Metadata = dict[str, str]
#: Resolves a caller from its metadata (tenant POS, car park, ops) or raises Unauthenticated.
Authenticator = Callable[[str, Metadata], Awaitable[dict[str, str]]]
Registration = tuple[Callable[[Any, grpc.aio.Server], None], Any]


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Correlation context, auth hook, deadline, error mapping and one log line per call."""

    def __init__(self, *, default_deadline_s: float, authenticate: Authenticator | None = None):
        self._default_deadline_s = default_deadline_s
        self._authenticate = authenticate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        inner = handler.unary_unary
        deadline = self._default_deadline_s
        authenticate = self._authenticate

        async def behavior(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            metadata = {k: v for k, v in ctx.invocation_metadata() or () if isinstance(v, str)}
            fields = context.from_headers(metadata)
            started = time.perf_counter()
            outcome = "OK"
            scope: asyncio.Timeout | None = None
            with context.bound(**fields, rpc=method):
                try:
                    if authenticate is not None:
                        principal = await authenticate(method, metadata)
                        structlog.contextvars.bind_contextvars(**principal)
                    remaining = ctx.time_remaining()
                    budget = min(remaining, deadline) if remaining else deadline
                    async with asyncio.timeout(budget) as scope:
                        return await inner(request, ctx)
                except AppError as exc:
                    outcome = exc.code
                    status = to_status(exc)
                    await ctx.abort(status.code, status.details, status.trailing_metadata)
                except TimeoutError:
                    if scope is None or not scope.expired():  # inside the handler: pool, upstream
                        outcome = "unavailable"
                        log.warning("rpc_timed_out_inside")
                        await ctx.abort(grpc.StatusCode.UNAVAILABLE, "timed out; retry")
                    outcome = "deadline_exceeded"
                    await ctx.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
                except grpc.aio.AbortError:
                    outcome = "aborted"
                    raise
                except Exception:
                    outcome = "internal"
                    log.exception("rpc_failed")
                    await ctx.abort(grpc.StatusCode.INTERNAL, "internal error")
                finally:
                    elapsed = time.perf_counter() - started
                    GRPC_REQUESTS.labels(method, outcome).inc()
                    GRPC_LATENCY.labels(method).observe(elapsed)
                    log.info("rpc", outcome=outcome, duration_ms=round(elapsed * 1000, 2))

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _safely(check: HealthCheck) -> bool:
    """A check that fails to answer counts as unhealthy; it never takes the server down."""
    try:
        return await check()
    except Exception as exc:
        log.warning("health_check_failed", error=repr(exc))
        return False


#: Shortest interval between a client's pings the server accepts (below kit.grpc_client's
#: 30 s, so its keepalive never counts as abuse and gets the connection closed).
MIN_PING_INTERVAL_MS = 10_000


def server_options(
    *, max_connection_age_s: float, max_connection_age_grace_s: float
) -> list[tuple[str, int]]:
    """grpc.aio server options; a ``max_connection_age_s`` of 0 lets connections live on."""
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    ]
    if max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", max(1, round(max_connection_age_s * 1000))),
            ("grpc.max_connection_age_grace_ms", round(max_connection_age_grace_s * 1000)),
        ]
    return options


class GrpcServer:
    """One grpc.aio server with health, reflection and the shared interceptor."""

    def __init__(
        self,
        *,
        service: str,
        registrations: Sequence[Registration],
        service_names: Sequence[str],
        health_checks: Sequence[HealthCheck] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        default_deadline_s: float = 10.0,
        authenticate: Authenticator | None = None,
        grace_s: float = 10.0,
        health_interval_s: float = 2.0,
        max_connection_age_s: float = 300.0,
    ) -> None:
        self.service = service
        self._registrations = registrations
        self._service_names = list(service_names)
        self._checks = health_checks
        self._address = f"{host}:{port}"
        self._grace_s = grace_s
        self._interval_s = health_interval_s
        self.health = health_aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[
                ServerInterceptor(default_deadline_s=default_deadline_s, authenticate=authenticate)
            ],
            options=server_options(
                max_connection_age_s=max_connection_age_s,
                max_connection_age_grace_s=default_deadline_s,
            ),
        )
        self.port = 0

    async def start(self) -> int:
        for add, servicer in self._registrations:
            add(servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                *self._service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.port = self.server.add_insecure_port(self._address)
        await self.server.start()
        await self._refresh_health()
        log.info("grpc_listening", port=self.port)
        return self.port

    async def _refresh_health(self) -> bool:
        healthy = all([await _safely(check) for check in self._checks])
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", self.service, *self._service_names):
            await self.health.set(name, status)
        return healthy

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self._grace_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Component: serve until asked to stop, keeping health in step with dependencies."""
        await self.start()
        try:
            was_healthy = True
            while not await sleep_or_stop(stop, self._interval_s):
                healthy = await self._refresh_health()
                if healthy != was_healthy:
                    log.warning("health_changed", serving=healthy)
                    was_healthy = healthy
        finally:
            await self.stop()
