"""With ADMIN_GRPC_PORT set, points' ops APIs leave the main port (which the gateway and
parking reach): PointsAdminService and ReconciliationService are served on the admin port
alone, and PointsService's AdjustPoints is refused on the main port and taken on the admin
one, while the rest of PointsService answers on both."""

from __future__ import annotations

import uuid

import grpc
import pytest
from kit.cli import serving
from kit.grpc_errors import from_rpc_error
from kit.migrations import migrate
from mall.points.v1 import points_service_pb2 as pb
from mall.points.v1 import points_service_pb2_grpc as pb_grpc
from mall_testing.embedded import free_port
from mall_testing.plugin import FreshDatabase
from points.bootstrap import MIGRATIONS, bootstrap
from points.config import Settings


async def test_the_ops_apis_are_served_on_the_admin_port_only(
    fresh_database: FreshDatabase, nats_url: str
) -> None:
    url = await fresh_database("points_admin_port")
    await migrate(url, MIGRATIONS)
    admin_port = free_port()
    settings = Settings(
        database_url=url,
        nats_url=nats_url,
        grpc_port=0,
        admin_grpc_port=admin_port,
        log_level="warning",
    )
    mall_id, member_id = f"mall-{uuid.uuid4().hex[:10]}", str(uuid.uuid4())
    adjust = pb.AdjustPointsRequest(
        mall_id=mall_id,
        member_id=member_id,
        points=500,
        reason="goodwill",
        operator="ops-1",
        request_id=uuid.uuid4().hex,
    )
    account = pb.GetAccountRequest(mall_id=mall_id, member_id=member_id)
    async with bootstrap(settings) as roles, serving(roles) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            points = pb_grpc.PointsServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await points.AdjustPoints(adjust, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            error = from_rpc_error(caught.value)
            assert error is not None
            assert error.code == "invalid_credential"
            assert (await points.GetAccount(account, timeout=5)).account.balance == 0

            admin = pb_grpc.PointsAdminServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await admin.ListEarningRules(pb.ListEarningRulesRequest(mall_id=mall_id), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            recon = pb_grpc.ReconciliationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await recon.ReconcilePayments(
                    pb.ReconcilePaymentsRequest(mall_id=mall_id), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

        async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as channel:
            points = pb_grpc.PointsServiceStub(channel)
            adjusted = await points.AdjustPoints(adjust, timeout=5)
            assert adjusted.account.balance == 500
            admin = pb_grpc.PointsAdminServiceStub(channel)
            await admin.ListEarningRules(pb.ListEarningRulesRequest(mall_id=mall_id), timeout=5)
        async with grpc.aio.insecure_channel(target) as channel:
            points = pb_grpc.PointsServiceStub(channel)
            assert (await points.GetAccount(account, timeout=5)).account.balance == 500
