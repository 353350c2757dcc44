"""kit.grpc_server's admin port over real grpc.aio servers: the admin registrations leave
the main port for their own, a registration may be on both, and ``ops_allowed()`` tells the
auth hook which port a call came in on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from kit.grpc_server import GrpcServer, Metadata, ops_allowed
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc
from mall_testing.embedded import free_port

POINTS = "mall.points.v1.PointsService"
ADMIN = "mall.points.v1.PointsAdminService"
OK = grpc.StatusCode.OK


class _Points(points_service_pb2_grpc.PointsServiceServicer):
    async def GetAccount(self, request: Any, ctx: Any) -> Any:
        return points_service_pb2.GetAccountResponse()


class _Admin(points_service_pb2_grpc.PointsAdminServiceServicer):
    async def ListEarningRules(self, request: Any, ctx: Any) -> Any:
        return points_service_pb2.ListEarningRulesResponse()


class _Hook:
    """An authenticate hook that records what ops_allowed() said for each call."""

    def __init__(self) -> None:
        self.ops: list[bool] = []

    async def __call__(self, method: str, metadata: Metadata) -> dict[str, str]:
        self.ops.append(ops_allowed())
        return {}


def _server(hook: _Hook, *, admin_port: int, both: bool = False) -> GrpcServer:
    points = (points_service_pb2_grpc.add_PointsServiceServicer_to_server, _Points())
    admin = (points_service_pb2_grpc.add_PointsAdminServiceServicer_to_server, _Admin())
    return GrpcServer(
        service="points",
        registrations=[points],
        admin_registrations=[admin, points] if both else [admin],
        service_names=[POINTS, ADMIN],
        port=0,
        admin_port=admin_port,
        authenticate=hook,
    )


@contextlib.asynccontextmanager
async def _started(server: GrpcServer) -> AsyncIterator[GrpcServer]:
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _code(port: int, rpc: str) -> grpc.StatusCode:
    """Call PointsService/GetAccount ("points") or PointsAdminService/ListEarningRules."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            if rpc == "points":
                stub = points_service_pb2_grpc.PointsServiceStub(channel)
                await stub.GetAccount(points_service_pb2.GetAccountRequest(), timeout=5)
            else:
                admin = points_service_pb2_grpc.PointsAdminServiceStub(channel)
                await admin.ListEarningRules(
                    points_service_pb2.ListEarningRulesRequest(), timeout=5
                )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def _health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(response.status)


def _reflected(port: int) -> set[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())


async def test_the_admin_registrations_answer_on_the_admin_port_only() -> None:
    hook = _Hook()
    async with _started(_server(hook, admin_port=free_port())) as server:
        assert server.admin_port not in (0, server.port)
        assert await _code(server.admin_port, "admin") == OK
        assert await _code(server.port, "admin") == grpc.StatusCode.UNIMPLEMENTED
        assert await _code(server.port, "points") == OK
        # The main registrations stay off the admin port unless registered there too.
        assert await _code(server.admin_port, "points") == grpc.StatusCode.UNIMPLEMENTED

        serving = health_pb2.HealthCheckResponse.SERVING
        assert await _health(server.admin_port) == serving
        main_names = await asyncio.to_thread(_reflected, server.port)
        admin_names = await asyncio.to_thread(_reflected, server.admin_port)
    assert POINTS in main_names
    assert ADMIN not in main_names
    assert ADMIN in admin_names
    assert POINTS not in admin_names
    # Admin call, then the main port's call: ops only on the admin server.
    assert hook.ops == [True, False]


async def test_a_registration_on_both_lists_answers_on_both_ports() -> None:
    hook = _Hook()
    async with _started(_server(hook, admin_port=free_port(), both=True)) as server:
        assert await _code(server.port, "points") == OK
        assert await _code(server.admin_port, "points") == OK
    assert hook.ops == [False, True]


async def test_without_an_admin_port_everything_is_on_the_main_port_as_ops() -> None:
    hook = _Hook()
    async with _started(_server(hook, admin_port=0, both=True)) as server:
        assert server.admin_port == 0
        assert await _code(server.port, "admin") == OK
        assert await _code(server.port, "points") == OK  # in both lists, added once
    assert hook.ops == [True, True]


def test_ops_is_not_allowed_outside_a_call() -> None:
    assert ops_allowed() is False
