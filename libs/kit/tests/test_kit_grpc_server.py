"""kit.grpc_server over a real grpc.aio server and channel: health, reflection, errors,
correlation, authentication, deadlines and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest
import structlog
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from kit import context, grpc_client
from kit.errors import (
    AppError,
    Conflict,
    ErrorKind,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from kit.grpc_errors import from_rpc_error
from kit.grpc_server import GrpcServer, Metadata
from kit.liveness import ProbeServer
from mall.coupons.v1 import coupons_service_pb2, coupons_service_pb2_grpc
from mall.points.v1 import points_pb2, points_service_pb2, points_service_pb2_grpc
from mall_testing.embedded import free_port
from prometheus_client import REGISTRY

POINTS = "mall.points.v1.PointsService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Request = points_service_pb2.GetAccountRequest
Response = points_service_pb2.GetAccountResponse
Behaviour = Callable[[Request], Awaitable[Response]]


async def _answer(request: Request) -> Response:
    return Response(account=points_pb2.Account(mall_id=request.mall_id, balance=7))


class _Points(points_service_pb2_grpc.PointsServiceServicer):
    """GetAccount does what the test says and remembers the context it ran in."""

    def __init__(self, behaviour: Behaviour = _answer) -> None:
        self.behaviour = behaviour
        self.seen: list[dict[str, Any]] = []

    async def GetAccount(self, request: Request, ctx: Any) -> Response:
        self.seen.append(structlog.contextvars.get_contextvars())
        return await self.behaviour(request)


def _server(servicer: _Points, **options: Any) -> GrpcServer:
    return GrpcServer(
        service="points",
        registrations=[(points_service_pb2_grpc.add_PointsServiceServicer_to_server, servicer)],
        service_names=[POINTS],
        port=0,
        **options,
    )


@contextlib.asynccontextmanager
async def _serving(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel
    finally:
        await server.stop()


def _points(channel: grpc.aio.Channel) -> points_service_pb2_grpc.PointsServiceAsyncStub:
    return points_service_pb2_grpc.PointsServiceStub(channel)


async def _status(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def _rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    return failure.value


async def _eventually(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):  # up to 10 s
        if await probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Flag:
    def __init__(self, value: bool) -> None:
        self.value = value

    async def check(self) -> bool:
        return self.value


# -- health -----------------------------------------------------------------------------------


async def test_health_is_serving_when_every_check_passes() -> None:
    server = _server(_Points(), health_checks=[_Flag(True).check, _Flag(True).check])
    async with _serving(server) as channel:
        assert await _status(channel) == SERVING
        assert await _status(channel, POINTS) == SERVING
        assert await _status(channel, "points") == SERVING


async def test_health_is_not_serving_from_the_start_when_a_check_fails() -> None:
    server = _server(_Points(), health_checks=[_Flag(True).check, _Flag(False).check])
    async with _serving(server) as channel:
        assert await _status(channel) == NOT_SERVING
        assert await _status(channel, POINTS) == NOT_SERVING
        assert await _status(channel, "points") == NOT_SERVING


async def test_run_keeps_health_in_step_with_the_checks() -> None:
    database = _Flag(True)
    server = _server(_Points(), health_checks=[database.check], health_interval_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        await _eventually(lambda: asyncio.sleep(0, server.port != 0), "the server to bind")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:

            async def statuses_are(expected: int) -> bool:
                try:
                    found = {await _status(channel, name) for name in ("", POINTS, "points")}
                except grpc.aio.AioRpcError:
                    return False  # not started yet
                return found == {expected}

            await _eventually(lambda: statuses_are(SERVING), "SERVING")
            database.value = False
            await _eventually(lambda: statuses_are(NOT_SERVING), "NOT_SERVING after a failure")
            database.value = True
            await _eventually(lambda: statuses_are(SERVING), "SERVING after recovery")
    finally:
        stop.set()
        await task
    assert task.exception() is None


async def test_health_and_reflection_need_no_credentials() -> None:
    async def refuse_everyone(method: str, metadata: Metadata) -> dict[str, str]:
        raise Unauthenticated("bad_credentials", "who are you?")

    server = _server(_Points(), authenticate=refuse_everyone)
    async with _serving(server) as channel:
        assert await _status(channel) == SERVING
        services = await asyncio.to_thread(_reflected_services, server.port)
        assert POINTS in services


# -- reflection -------------------------------------------------------------------------------


def _reflected_services(port: int) -> list[str]:
    # The reflection client is synchronous: tests call it in a thread.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return list(ProtoReflectionDescriptorDatabase(channel).get_services())


def _reflected_methods(port: int, service: str) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        return sorted(pool.FindServiceByName(service).methods_by_name)


async def test_reflection_lists_the_services_and_describes_them() -> None:
    server = _server(_Points())
    async with _serving(server):
        services = await asyncio.to_thread(_reflected_services, server.port)
        methods = await asyncio.to_thread(_reflected_methods, server.port, POINTS)

    assert POINTS in services
    assert "grpc.health.v1.Health" in services
    assert "GetAccount" in methods
    assert "HoldPoints" in methods


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound, grpc.StatusCode.NOT_FOUND),
        (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
        (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
        (Unavailable, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_an_app_error_arrives_as_its_status_with_the_stable_code(
    error: type[AppError], status: grpc.StatusCode, unique_id: str
) -> None:
    async def refuse(request: Request) -> Response:
        raise error(f"code_{unique_id}", "the account is frozen", member_id=request.member_id)

    server = _server(_Points(refuse))
    async with _serving(server) as channel:
        failure = await _rpc_error(
            _points(channel).GetAccount(Request(mall_id="m", member_id=unique_id))
        )

    assert failure.code() == status
    assert failure.details() == "the account is frozen"
    rebuilt = from_rpc_error(failure)
    assert rebuilt is not None
    assert rebuilt.kind is error.kind
    assert rebuilt.code == f"code_{unique_id}"
    assert rebuilt.message == "the account is frozen"
    assert rebuilt.details == {"member_id": unique_id}


async def test_an_unexpected_exception_is_internal_and_leaks_nothing() -> None:
    async def crash(request: Request) -> Response:
        raise RuntimeError("password=hunter2 in a stack trace")

    server = _server(_Points(crash))
    async with _serving(server) as channel:
        failure = await _rpc_error(_points(channel).GetAccount(Request(mall_id="m")))

    assert failure.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (failure.details() or "")
    assert from_rpc_error(failure) is None


async def test_statuses_without_our_details_are_not_rebuilt_as_app_errors() -> None:
    nobody = free_port()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{nobody}") as channel:
        failure = await _rpc_error(_points(channel).GetAccount(Request(mall_id="m"), timeout=5))

    assert failure.code() == grpc.StatusCode.UNAVAILABLE
    assert from_rpc_error(failure) is None


# -- correlation and authentication -----------------------------------------------------------


async def test_the_correlation_id_in_metadata_is_bound_in_the_handler(unique_id: str) -> None:
    servicer = _Points()
    server = _server(servicer)
    async with _serving(server) as channel:
        response = await _points(channel).GetAccount(
            Request(mall_id="m"),
            metadata=(
                ("x-correlation-id", f"corr-{unique_id}"),
                ("x-mall-id", f"mall-{unique_id}"),
            ),
        )
        await _points(channel).GetAccount(Request(mall_id="m"))

    assert response.account.balance == 7
    with_id, without_id = servicer.seen
    assert with_id["correlation_id"] == f"corr-{unique_id}"
    assert with_id["mall_id"] == f"mall-{unique_id}"
    assert with_id["rpc"] == f"/{POINTS}/GetAccount"
    # No id sent: one is made up, so every line of the call still shares one.
    assert without_id["correlation_id"]
    assert without_id["correlation_id"] != f"corr-{unique_id}"


async def test_kit_client_channels_forward_the_bound_context(unique_id: str) -> None:
    seen: list[str | None] = []

    async def record(request: Request) -> Response:
        seen.append(context.correlation_id())
        return Response()

    server = _server(_Points(record))
    async with _serving(server):
        channel = grpc_client.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            with context.bound(correlation_id=f"corr-{unique_id}"):
                await _points(channel).GetAccount(Request(mall_id="m"))
        finally:
            await channel.close(None)

    assert seen == [f"corr-{unique_id}"]


async def test_the_authenticate_hook_refuses_and_binds_the_caller(unique_id: str) -> None:
    asked: list[tuple[str, str | None]] = []

    async def authenticate(method: str, metadata: Metadata) -> dict[str, str]:
        asked.append((method, metadata.get("authorization")))
        if metadata.get("authorization") != f"Bearer {unique_id}":
            raise Unauthenticated("bad_credentials", "unknown caller")
        return {"tenant_id": f"tenant-{unique_id}"}

    servicer = _Points()
    server = _server(servicer, authenticate=authenticate)
    async with _serving(server) as channel:
        failure = await _rpc_error(
            _points(channel).GetAccount(
                Request(mall_id="m"), metadata=(("authorization", "Bearer wrong"),)
            )
        )
        await _points(channel).GetAccount(
            Request(mall_id="m"), metadata=(("authorization", f"Bearer {unique_id}"),)
        )

    assert failure.code() == grpc.StatusCode.UNAUTHENTICATED
    refused = from_rpc_error(failure)
    assert refused is not None
    assert refused.kind is ErrorKind.UNAUTHENTICATED
    assert refused.code == "bad_credentials"
    assert asked == [
        (f"/{POINTS}/GetAccount", "Bearer wrong"),
        (f"/{POINTS}/GetAccount", f"Bearer {unique_id}"),
    ]
    [admitted] = servicer.seen  # the refused call never reached the handler
    assert admitted["tenant_id"] == f"tenant-{unique_id}"


# -- deadlines and shutdown -------------------------------------------------------------------


async def test_a_handler_slower_than_the_default_deadline_is_cut_off() -> None:
    never = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang(request: Request) -> Response:
        try:
            await never.wait()
        finally:
            cancelled.set()
        return Response()

    server = _server(_Points(hang), default_deadline_s=0.2)
    async with _serving(server) as channel:
        # The client sets no deadline: the server's default is what ends the call.
        failure = await _rpc_error(_points(channel).GetAccount(Request(mall_id="m")))

    assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cancelled.is_set()  # the handler's work was stopped, not left running


async def test_a_timeout_inside_the_handler_is_unavailable_not_a_deadline() -> None:
    async def pool_timed_out(request: Request) -> Response:
        raise TimeoutError("pool acquire")

    server = _server(_Points(pool_timed_out), default_deadline_s=5)
    async with _serving(server) as channel:
        failure = await _rpc_error(_points(channel).GetAccount(Request(mall_id="m")))

    assert failure.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_health_check_that_raises_reads_as_not_serving() -> None:
    async def broken() -> bool:
        raise ConnectionResetError("database went away")

    server = _server(_Points(), health_checks=[_Flag(True).check, broken])
    async with _serving(server) as channel:
        assert await _status(channel) == NOT_SERVING
        assert await _status(channel, POINTS) == NOT_SERVING


async def test_stop_turns_health_off_first_and_drains_calls_in_flight() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response(account=points_pb2.Account(mall_id=request.mall_id))

    server = _server(_Points(slow), grace_s=10.0)
    await server.start()
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="")
            )
            assert (await watch.read()).status == SERVING
            in_flight = asyncio.ensure_future(
                _points(channel).GetAccount(Request(mall_id="in-flight"))
            )
            await asyncio.wait_for(entered.wait(), timeout=10)

            stopping = asyncio.create_task(server.stop())
            assert (await asyncio.wait_for(watch.read(), timeout=10)).status == NOT_SERVING
            watch.cancel()

            refusals: list[grpc.StatusCode] = []

            async def refusing_new_calls() -> bool:
                try:
                    await _status(channel)
                except grpc.aio.AioRpcError as refused:
                    refusals.append(refused.code())
                    return True
                return False

            await _eventually(refusing_new_calls, "the server to refuse new calls")
            # UNAVAILABLE as a rule; CANCELLED when the call reached the transport just as the
            # server began shutting it down (grpc's own race, about 1 run in 6 here).
            assert len(refusals) == 1
            assert refusals[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            assert not in_flight.done()  # the call in flight is given its grace period

            release.set()
            response = await asyncio.wait_for(in_flight, timeout=10)
            await asyncio.wait_for(stopping, timeout=10)
            stopped = True
            assert response.account.mall_id == "in-flight"
    finally:
        release.set()
        if not stopped:
            await server.stop()


async def test_calls_are_counted_and_timed_by_method_and_outcome(unique_id: str) -> None:
    method = f"/{POINTS}/GetAccount"

    def count(code: str) -> float:
        value = REGISTRY.get_sample_value(
            "mall_grpc_requests_total", {"method": method, "code": code}
        )
        return value or 0.0

    async def refuse(request: Request) -> Response:
        if request.mall_id == "bad":
            raise InvalidInput("invalid_mall_id", "no")
        return Response()

    ok_before, bad_before = count("OK"), count("invalid_mall_id")
    async with _serving(_server(_Points(refuse))) as channel:
        await _points(channel).GetAccount(Request(mall_id="m"))
        await _rpc_error(_points(channel).GetAccount(Request(mall_id="bad")))

    assert (count("OK"), count("invalid_mall_id")) == (ok_before + 1, bad_before + 1)
    timed = REGISTRY.get_sample_value(
        "mall_grpc_request_duration_seconds_count", {"method": method}
    )
    assert timed is not None
    assert timed >= 2


async def test_metrics_are_served_in_the_prometheus_text_format() -> None:
    port = free_port()
    server = ProbeServer(port, host="127.0.0.1", max_age_s=60)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        for _ in range(200):  # bounded: until it listens
            if server.bound_port or task.done():
                break
            await asyncio.sleep(0.01)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    for name in (
        "mall_grpc_requests_total",
        "mall_consumer_messages_total",
        "mall_dead_letters_total",
        "mall_outbox_backlog",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text


class _Tills(coupons_service_pb2_grpc.CouponsServiceServicer):
    """RedeemCoupons answers each request with its use_request_id; "stop" ends the stream with
    an AppError after the answers before it, as a revoked credential does."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def RedeemCoupons(
        self, requests: AsyncIterator[coupons_service_pb2.RedeemCouponRequest], ctx: Any
    ) -> AsyncIterator[coupons_service_pb2.RedeemCouponsResponse]:
        async for request in requests:
            self.seen.append(structlog.contextvars.get_contextvars())
            if request.use_request_id == "stop":
                raise Unauthenticated("invalid_credential", "revoked")
            yield coupons_service_pb2.RedeemCouponsResponse(use_request_id=request.use_request_id)


async def test_a_stream_is_one_call_checked_once_and_its_error_carries_the_reason() -> None:
    method = "/mall.coupons.v1.CouponsService/RedeemCoupons"
    checked: list[Metadata] = []

    async def authenticate(rpc: str, metadata: Metadata) -> dict[str, str]:
        checked.append(metadata)
        return {"tenant_id": "coffee"}

    def count(code: str) -> float:
        value = REGISTRY.get_sample_value(
            "mall_grpc_requests_total", {"method": method, "code": code}
        )
        return value or 0.0

    tills = _Tills()
    server = GrpcServer(
        service="coupons",
        registrations=[(coupons_service_pb2_grpc.add_CouponsServiceServicer_to_server, tills)],
        service_names=["mall.coupons.v1.CouponsService"],
        port=0,
        authenticate=authenticate,
    )
    before = count("invalid_credential")
    async with _serving(server) as channel:
        stub = coupons_service_pb2_grpc.CouponsServiceStub(channel)
        uses = ["u1", "u2", "stop", "never-read"]
        call = stub.RedeemCoupons(
            iter(coupons_service_pb2.RedeemCouponRequest(use_request_id=u) for u in uses),
            metadata=(("x-mall-credential", "c.s"), ("x-correlation-id", "till-7")),
        )
        answered: list[str] = []

        async def read_all() -> None:
            async for answer in call:
                answered.append(answer.use_request_id)

        ended = await _rpc_error(read_all())

    assert answered == ["u1", "u2"]
    error = from_rpc_error(ended)
    assert ended.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error is not None
    assert error.code == "invalid_credential"
    assert len(checked) == 1  # once for the stream, not per message
    assert checked[0]["x-mall-credential"] == "c.s"
    assert all(seen["tenant_id"] == "coffee" for seen in tills.seen)
    assert all(seen["correlation_id"] == "till-7" for seen in tills.seen)
    assert count("invalid_credential") == before + 1
