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

Admin APIs (directory writes, rules, ops-only RPCs) may get a port of their own
(ADMIN_GRPC_PORT): a second server answers them there and the main port does not serve them,
so a network policy admitting a caller to the main port does not admit it to them. Ops reach
the admin port by port-forward. Without one (0: dev, tests) every API is on the main port.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health as _health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kit import context
from kit.errors import AppError, Unauthenticated
from kit.grpc_errors import to_status
from kit.lifecycle import sleep_or_stop
from kit.metrics import GRPC_LATENCY, GRPC_REQUESTS

log = structlog.get_logger(__name__)
# One child per (method, outcome): prometheus-client's labels() takes a lock on every call.
_requests = functools.cache(GRPC_REQUESTS.labels)
health_aio: Any = _health.aio  # type: ignore[attr-defined]  # the asyncio servicer

HealthCheck = Callable[[], Awaitable[bool]]
Metadata = dict[str, str]
#: Resolves a caller from its metadata (tenant POS, car park, ops) or raises Unauthenticated.
Authenticator = Callable[[str, Metadata], Awaitable[dict[str, str]]]
Registration = tuple[Callable[[Any, grpc.aio.Server], None], Any]

_ops = contextvars.ContextVar("grpc_ops_allowed", default=False)


def ops_allowed() -> bool:
    """Whether the current call may act as ops without a credential: it came in on the admin
    port, or on the main port of a server that has none. False outside a call (closed)."""
    return _ops.get()


def require_ops(method: str, detail: str | None = None) -> None:
    """Refuse the current call unless it may act as ops (``ops_allowed``): UNAUTHENTICATED
    ``invalid_credential``, pointing the caller at the admin port."""
    if not ops_allowed():
        raise Unauthenticated(
            "invalid_credential", detail or f"{method} is for ops: call it on the admin port"
        )


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Correlation context, auth hook, deadline, error mapping and one log line per call, for
    unary calls and bidirectional streams (a stream is one call: checked once when it opens)."""

    def __init__(
        self,
        *,
        default_deadline_s: float,
        authenticate: Authenticator | None = None,
        ops: bool = True,
    ):
        self._default_deadline_s = default_deadline_s
        self._authenticate = authenticate
        self._ops = ops  # what ops_allowed() says in this server's calls
        # method → (the servicer's handler, our wrapper): built once, not on every call.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or (handler.unary_unary is None and handler.stream_stream is None):
            return handler
        method: str = handler_call_details.method
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        serve = functools.partial(self._serve, method, GRPC_LATENCY.labels(method))
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
                return await serve(ctx, lambda: inner(request, ctx), self._default_deadline_s)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        streamed = handler.stream_stream
        if inspect.isasyncgenfunction(streamed):
            produce = streamed

            async def streamed(requests: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> None:
                async for response in produce(requests, ctx):
                    await ctx.write(response)

        async def stream(requests: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> None:
            # A stream lives as long as its caller keeps it (a till's session): no default
            # deadline; the caller's own deadline, if any, still ends it.
            await serve(ctx, lambda: streamed(requests, ctx), None)

        return grpc.stream_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _serve(
        self,
        method: str,
        latency: Any,
        ctx: grpc.aio.ServicerContext[Any, Any],
        run: Callable[[], Awaitable[Any]],
        deadline: float | None,
    ) -> Any:
        """One call: its context, the auth hook, its deadline, errors as statuses, a log line."""
        _ops.set(self._ops)  # each call runs in its own task: this stays within the call
        metadata = {k: v for k, v in ctx.invocation_metadata() or () if isinstance(v, str)}
        fields = context.from_headers(metadata)
        started = time.perf_counter()
        outcome = "OK"
        scope: asyncio.Timeout | None = None
        with context.bound(**fields, rpc=method):
            try:
                if self._authenticate is not None:
                    principal = await self._authenticate(method, metadata)
                    structlog.contextvars.bind_contextvars(**principal)
                if deadline is None:
                    return await run()
                remaining = ctx.time_remaining()
                budget = min(remaining, deadline) if remaining else deadline
                async with asyncio.timeout(budget) as scope:
                    return await run()
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
            except asyncio.CancelledError:
                outcome = "cancelled"  # the caller went away (or the server is stopping)
                raise
            except Exception:
                outcome = "internal"
                log.exception("rpc_failed")
                await ctx.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                elapsed = time.perf_counter() - started
                _requests(method, outcome).inc()
                latency.observe(elapsed)
                log.info("rpc", outcome=outcome, duration_ms=round(elapsed * 1000, 2))


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


class _Recorder:
    """Stands in for a server to learn which gRPC services a registration adds."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self.names += [h.service_name() for h in handlers if hasattr(h, "service_name")]

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.names.append(service)


def _services_of(registrations: Sequence[Registration]) -> set[str]:
    recorder = _Recorder()
    for add, servicer in registrations:
        add(servicer, recorder)  # type: ignore[arg-type]
    return set(recorder.names)


@dataclass(frozen=True)
class _Listener:
    """One grpc.aio server, what it serves and where."""

    server: grpc.aio.Server
    registrations: list[Registration]
    address: str


class GrpcServer:
    """One grpc.aio server with health, reflection and the shared interceptor; a second one
    on ``admin_port`` for ``admin_registrations`` if that port is set.

    With ``admin_port`` 0 the admin registrations are served on the main port with the
    others (a registration in both lists once) and every call there may act as ops
    (``ops_allowed()``). With an admin port, the main server serves ``registrations`` only
    and its calls are not ops; the admin server serves ``admin_registrations`` (a
    registration may be in both), with the same interceptor and health, and its calls are.
    """

    def __init__(
        self,
        *,
        service: str,
        registrations: Sequence[Registration],
        service_names: Sequence[str],
        health_checks: Sequence[HealthCheck] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        admin_registrations: Sequence[Registration] = (),
        admin_port: int = 0,
        default_deadline_s: float = 10.0,
        authenticate: Authenticator | None = None,
        grace_s: float = 10.0,
        health_interval_s: float = 2.0,
        max_connection_age_s: float = 300.0,
    ) -> None:
        self.service = service
        self._service_names = list(service_names)
        self._checks = health_checks
        self._grace_s = grace_s
        self._interval_s = health_interval_s
        self.health = health_aio.HealthServicer()
        separate = admin_port != 0
        main = list(registrations)
        if not separate:  # one server: a registration in both lists is added once
            main += [r for r in admin_registrations if r[0] not in {add for add, _ in main}]

        def server(registered: list[Registration], port: int, *, ops: bool) -> _Listener:
            interceptor = ServerInterceptor(
                default_deadline_s=default_deadline_s, authenticate=authenticate, ops=ops
            )
            aio = grpc.aio.server(
                interceptors=[interceptor],
                options=server_options(
                    max_connection_age_s=max_connection_age_s,
                    max_connection_age_grace_s=default_deadline_s,
                ),
            )
            return _Listener(aio, registered, f"{host}:{port}")

        self._main = server(main, port, ops=not separate)
        self._admin = server(list(admin_registrations), admin_port, ops=True) if separate else None
        self.server = self._main.server
        self.port = 0
        self.admin_port = 0  # bound once started; 0 without a separate admin server

    async def start(self) -> int:
        if self._admin is not None:  # first: ``port`` set means both listen (kit.cli.serving)
            self.admin_port = await self._start(self._admin)
        self.port = await self._start(self._main)
        await self._refresh_health()
        log.info("grpc_listening", port=self.port, admin_port=self.admin_port or None)
        return self.port

    async def _start(self, listener: _Listener) -> int:
        for add, servicer in listener.registrations:
            add(servicer, listener.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, listener.server)
        served = _services_of(listener.registrations)
        reflection.enable_server_reflection(
            [
                *(name for name in self._service_names if name in served),
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            listener.server,
        )
        port = listener.server.add_insecure_port(listener.address)
        await listener.server.start()
        return port

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
        listeners = [self._main] if self._admin is None else [self._main, self._admin]
        await asyncio.gather(*(x.server.stop(self._grace_s) for x in listeners))

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
