"""points' redemption API over gRPC (PointsService.HoldPoints / ConfirmHold / ReleaseHold).

Off the payment path: a quote asks for a hold with a short deadline and, if points does not
answer, quotes without points rather than keep a gate closed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from kit.grpc_client import insecure_channel
from kit.grpc_errors import from_rpc_error
from mall.points.v1 import points_pb2, points_service_pb2, points_service_pb2_grpc


class GrpcPoints:
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 1.0) -> None:
        self._stub = points_service_pb2_grpc.PointsServiceStub(channel)
        self._timeout_s = timeout_s

    async def hold(
        self, mall_id: str, member_id: str, points: int, *, reward_ref: str, request_id: str
    ) -> str:
        try:
            reply = await self._stub.HoldPoints(
                points_service_pb2.HoldPointsRequest(
                    mall_id=mall_id,
                    member_id=member_id,
                    points=points,
                    reward_kind=points_pb2.REWARD_KIND_PARKING,
                    reward_ref=reward_ref,
                    request_id=request_id,
                ),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) or exc from None
        return reply.hold_id

    async def confirm(self, mall_id: str, hold_id: str) -> None:
        try:
            await self._stub.ConfirmHold(
                points_service_pb2.ConfirmHoldRequest(mall_id=mall_id, hold_id=hold_id),
                timeout=self._timeout_s * 3,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) or exc from None

    async def release(self, mall_id: str, hold_id: str, reason: str) -> None:
        try:
            await self._stub.ReleaseHold(
                points_service_pb2.ReleaseHoldRequest(
                    mall_id=mall_id, hold_id=hold_id, reason=reason
                ),
                timeout=self._timeout_s * 3,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) or exc from None


@contextlib.asynccontextmanager
async def points_client(target: str, timeout_s: float) -> AsyncIterator[GrpcPoints | None]:
    """A client for ``target``; None when no target is set (paying with points is off)."""
    if not target:
        yield None
        return
    channel = insecure_channel(target)
    try:
        yield GrpcPoints(channel, timeout_s=timeout_s)
    finally:
        await channel.close(None)
