"""A demo mall, created through member's public DirectoryService (as ops would).

Used by ``make run`` to seed the local suite, by system tests (with unique ids so tests never
collide) and by the benchmarks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc


@dataclass(frozen=True)
class DemoStore:
    tenant_id: str
    tenant_name: str
    category: str
    store_id: str
    shop_number: str


@dataclass(frozen=True)
class DemoMall:
    mall_id: str = "demo-mall"
    name: str = "Mall Circle Demo Plaza"
    appid: str = "wxd930ea5d5a258f4f"
    brand_id: str = "demo-brand"
    mchid: str = "1900000109"
    car_park_id: str = "p1"
    car_park_name: str = "North car park"
    stores: tuple[DemoStore, ...] = field(
        default_factory=lambda: (
            DemoStore("coffee-corner", "Coffee Corner", "food", "coffee-corner-l1", "SHOP-001"),
            DemoStore("run-fast", "Run Fast Sports", "sports", "run-fast-l2", "SHOP-002"),
            DemoStore("blue-cloth", "Blue Cloth", "fashion", "blue-cloth-l3", "SHOP-003"),
        )
    )

    @classmethod
    def unique(cls) -> DemoMall:
        """A mall no other test shares: ids and appid carry a random suffix."""
        tag = uuid.uuid4().hex[:10]
        return cls(mall_id=f"mall-{tag}", name=f"Test Mall {tag}", appid=f"wx{tag}")


async def seed(member_target: str, mall: DemoMall | None = None) -> DemoMall:
    """Create the mall, its tenants, stores and car park; safe to run again."""
    mall = mall or DemoMall()
    async with grpc.aio.insecure_channel(member_target) as channel:
        directory = member_service_pb2_grpc.DirectoryServiceStub(channel)
        await directory.CreateMall(
            member_service_pb2.CreateMallRequest(
                mall_id=mall.mall_id,
                name=mall.name,
                appid=mall.appid,
                brand_id=mall.brand_id,
                mchid=mall.mchid,
            ),
            timeout=10,
            wait_for_ready=True,
        )
        for s in mall.stores:
            await directory.CreateTenant(
                member_service_pb2.CreateTenantRequest(
                    mall_id=mall.mall_id,
                    tenant_id=s.tenant_id,
                    name=s.tenant_name,
                    category=s.category,
                ),
                timeout=10,
            )
            await directory.CreateStore(
                member_service_pb2.CreateStoreRequest(
                    mall_id=mall.mall_id,
                    tenant_id=s.tenant_id,
                    store_id=s.store_id,
                    name=s.tenant_name,
                    mchid=mall.mchid,
                    shop_number=s.shop_number,
                ),
                timeout=10,
            )
        await directory.CreateCarPark(
            member_service_pb2.CreateCarParkRequest(
                mall_id=mall.mall_id, car_park_id=mall.car_park_id, name=mall.car_park_name
            ),
            timeout=10,
        )
    return mall


def payment_notification(
    mall: DemoMall,
    *,
    openid: str,
    amount_fen: int,
    transaction_id: str | None = None,
    shop_number: str | None = None,
) -> dict[str, Any]:
    """A mall payment notification (MALL_TRANSACTION.SUCCESS) with its resource decrypted."""
    transaction_id = transaction_id or f"4200{uuid.uuid4().int % 10**24:024d}"
    store = mall.stores[0]
    return {
        "id": str(uuid.uuid4()),
        "create_time": datetime.now(UTC).isoformat(),
        "event_type": "MALL_TRANSACTION.SUCCESS",
        "resource_type": "encrypt-resource",
        "summary": "商圈支付结果通知",
        "resource": {
            "mchid": mall.mchid,
            "merchant_name": store.tenant_name,
            "shop_name": store.tenant_name,
            "shop_number": shop_number or store.shop_number,
            "appid": mall.appid,
            "openid": openid,
            "time_end": datetime.now(UTC).isoformat(timespec="seconds"),
            "amount": amount_fen,
            "transaction_id": transaction_id,
            "commit_tag": "",
        },
    }
