"""With ADMIN_GRPC_PORT set, coupons' stock RPCs without a credential (ops calls) are taken on
the admin port only: the main port, which the gateway reaches, refuses them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from coupons.bootstrap import MIGRATIONS, bootstrap
from coupons.config import Settings
from kit.cli import serving
from kit.grpc_errors import from_rpc_error
from kit.migrations import migrate
from kit.proto import timestamp
from mall.coupons.v1 import coupons_pb2 as cpb
from mall.coupons.v1 import coupons_service_pb2 as pb
from mall.coupons.v1 import coupons_service_pb2_grpc as pb_grpc
from mall_testing.embedded import free_port
from mall_testing.plugin import FreshDatabase


def _request(mall_id: str) -> pb.CreateStockRequest:
    now = datetime.now(UTC)
    stock = cpb.Stock(
        mall_id=mall_id,
        title="满100减20",
        coupon_type=cpb.COUPON_TYPE_FIXED_AMOUNT,
        discount_fen=2000,
        threshold_fen=10000,
        max_coupons=100,
        claim_starts_at=timestamp(now - timedelta(hours=1)),
        claim_ends_at=timestamp(now + timedelta(days=1)),
        valid_days=30,
    )
    return pb.CreateStockRequest(stock=stock, request_id=str(uuid.uuid4()))


async def _stocks(url: str, mall_id: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM stocks WHERE mall_id = $1", mall_id))
    finally:
        await conn.close()


async def test_a_credential_less_stock_call_is_ops_on_the_admin_port_only(
    fresh_database: FreshDatabase, nats_url: str
) -> None:
    url = await fresh_database("coupons_admin_port")
    await migrate(url, MIGRATIONS)
    mall_id = f"mall-{uuid.uuid4().hex[:12]}"
    admin_port = free_port()
    settings = Settings(
        database_url=url,
        nats_url=nats_url,
        grpc_port=0,
        admin_grpc_port=admin_port,
        log_level="warning",
    )
    async with bootstrap(settings) as roles, serving(roles) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            main = pb_grpc.CouponsServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await main.CreateStock(_request(mall_id), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            error = from_rpc_error(caught.value)
            assert error is not None
            assert error.code == "invalid_credential"
        assert await _stocks(url, mall_id) == 0

        async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as channel:
            admin = pb_grpc.CouponsServiceStub(channel)
            created = (await admin.CreateStock(_request(mall_id), timeout=5)).stock
        assert created.stock_id
        assert await _stocks(url, mall_id) == 1
