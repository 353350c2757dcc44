"""Baseline servers for the benchmarks: an empty aiohttp JSON handler and an empty grpc.aio
unary call, each in this one process, so the suite's figures can be read as ratios."""

from __future__ import annotations

import asyncio
import sys

import grpc
import uvloop
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc


class EmptyHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: object
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def empty(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


async def main(http_port: int, grpc_port: int) -> None:
    app = web.Application()
    app.router.add_post("/empty", empty)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(EmptyHealth(), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
