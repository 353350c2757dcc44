"""kit's channels spread calls over every replica a target resolves to, and kit's servers
close connections after GRPC_MAX_CONNECTION_AGE_S so clients resolve again (real grpc.aio
servers and channels)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from kit import grpc_client
from kit.grpc_server import GrpcServer
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc

Request = points_service_pb2.GetAccountRequest
Response = points_service_pb2.GetAccountResponse


class _Replica(points_service_pb2_grpc.PointsServiceServicer):
    """Answers GetAccount and remembers each caller's connection (its address and port)."""

    def __init__(self) -> None:
        self.peers: list[str] = []

    async def GetAccount(self, request: Request, ctx: Any) -> Response:
        self.peers.append(ctx.peer())
        return Response()


@contextlib.asynccontextmanager
async def _replicas(count: int, **options: Any) -> AsyncIterator[list[tuple[_Replica, int]]]:
    started: list[tuple[_Replica, GrpcServer]] = []
    try:
        for _ in range(count):
            replica = _Replica()
            server = GrpcServer(
                service="points",
                registrations=[
                    (points_service_pb2_grpc.add_PointsServiceServicer_to_server, replica)
                ],
                service_names=["mall.points.v1.PointsService"],
                **options,
            )
            await server.start()
            started.append((replica, server))
        yield [(replica, server.port) for replica, server in started]
    finally:
        for _, server in started:
            await server.stop()


async def test_calls_go_round_every_address_of_the_target() -> None:
    async with _replicas(2) as replicas:
        (first, p1), (second, p2) = replicas
        channel = grpc_client.insecure_channel(f"ipv4:127.0.0.1:{p1},127.0.0.1:{p2}")
        try:
            stub = points_service_pb2_grpc.PointsServiceStub(channel)
            # The first calls may go out while only one connection is up.
            for _ in range(200):
                await stub.GetAccount(Request(mall_id="m"), timeout=5)
                if first.peers and second.peers:
                    break
            before = len(first.peers), len(second.peers)
            for _ in range(20):
                await stub.GetAccount(Request(mall_id="m"), timeout=5)
        finally:
            await channel.close(None)

    # pick_first would have sent all of them down one connection, to one replica.
    assert len(first.peers) - before[0] == 10
    assert len(second.peers) - before[1] == 10


async def test_a_connection_is_replaced_after_the_maximum_age() -> None:
    async with _replicas(1, max_connection_age_s=0.2, default_deadline_s=1.0) as replicas:
        [(replica, port)] = replicas
        channel = grpc_client.insecure_channel(f"127.0.0.1:{port}")
        try:
            stub = points_service_pb2_grpc.PointsServiceStub(channel)
            for _ in range(200):  # up to ~10 s; without a maximum age it never reconnects
                await stub.GetAccount(Request(mall_id="m"), wait_for_ready=True, timeout=5)
                if len(set(replica.peers)) > 1:
                    break
                await asyncio.sleep(0.05)
        finally:
            await channel.close(None)

    # Every call succeeded, over more than one connection (a new client port).
    assert len(set(replica.peers)) > 1, replica.peers


async def test_without_a_maximum_age_the_connection_stays() -> None:
    async with _replicas(1, max_connection_age_s=0, default_deadline_s=1.0) as replicas:
        [(replica, port)] = replicas
        async with grpc_client.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = points_service_pb2_grpc.PointsServiceStub(channel)
            for _ in range(10):
                await stub.GetAccount(Request(mall_id="m"), timeout=5)
                await asyncio.sleep(0.05)

    assert len(replica.peers) == 10
    assert len(set(replica.peers)) == 1


async def test_a_replica_that_says_not_serving_is_left_out_until_it_serves_again() -> None:
    healthy = {0: True, 1: True}
    stop = asyncio.Event()
    replicas: list[_Replica] = []
    servers: list[GrpcServer] = []
    running: list[asyncio.Task[None]] = []

    def check(n: int) -> Any:
        async def ok() -> bool:
            return healthy[n]

        return ok

    try:
        for n in range(2):
            replica = _Replica()
            server = GrpcServer(
                service="points",
                registrations=[
                    (points_service_pb2_grpc.add_PointsServiceServicer_to_server, replica)
                ],
                service_names=["mall.points.v1.PointsService"],
                health_checks=[check(n)],
                health_interval_s=0.05,
            )
            running.append(asyncio.create_task(server.run(stop)))  # health follows the check
            replicas.append(replica)
            servers.append(server)
        for _ in range(200):
            if all(s.port for s in servers):
                break
            await asyncio.sleep(0.01)
        first, second = replicas
        target = f"ipv4:127.0.0.1:{servers[0].port},127.0.0.1:{servers[1].port}"
        async with grpc_client.insecure_channel(target) as channel:
            stub = points_service_pb2_grpc.PointsServiceStub(channel)

            async def calls(n: int) -> tuple[int, int]:
                before = len(first.peers), len(second.peers)
                for _ in range(n):
                    await stub.GetAccount(Request(mall_id="m"), timeout=5, wait_for_ready=True)
                return len(first.peers) - before[0], len(second.peers) - before[1]

            for _ in range(200):  # both connected and watched
                if all(await calls(2)):
                    break

            healthy[1] = False  # e.g. its PostgreSQL went away: readiness fails too
            for _ in range(200):
                if (await calls(10))[1] == 0:
                    break
                await asyncio.sleep(0.02)
            assert await calls(20) == (20, 0)

            healthy[1] = True
            for _ in range(200):
                if (await calls(10))[1] > 0:
                    break
                await asyncio.sleep(0.02)
            assert await calls(20) == (10, 10)
    finally:
        stop.set()
        await asyncio.gather(*running)
