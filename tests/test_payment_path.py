"""The first payment, end to end: gateway → PAYMENTS → member → MEMBER → points → gateway."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from gateway.adapters.services import Backends
from kit.grpc_client import insecure_channel
from mall.member.v1 import member_service_pb2_grpc
from mall.points.v1 import points_service_pb2_grpc
from mall_testing.demo import DemoMall, payment_notification, seed

from tests.conftest import Suite, fetchval


async def wait_for_balance(
    suite: Suite, mall: DemoMall, openid: str, balance: int
) -> dict[str, Any]:
    """The shopper's balance and ledger as the gateway reads them (member, then points),
    once the balance is what the test expects. (Shoppers read their own through
    /v1/me/points after logging in: services/gateway/tests/test_gateway_shoppers.py.)"""
    body: dict[str, Any] = {}
    async with (
        insecure_channel(suite.member_grpc) as member,
        insecure_channel(suite.points_grpc) as points,
    ):
        backends = Backends(
            member=member_service_pb2_grpc.MemberServiceStub(member),
            points=points_service_pb2_grpc.PointsServiceStub(points),
        )
        for _ in range(1200):  # up to 60 s on a loaded machine
            card = await backends.member_by_openid(mall.mall_id, openid)
            if card is not None:
                body = await backends.points_summary(
                    mall.mall_id, card.member_id, page_size=20, page_token=""
                )
            if body.get("balance") == balance:
                return body
            await asyncio.sleep(0.05)
    raise AssertionError(f"balance never reached {balance}; last answer {body}")


async def post(suite: Suite, notification: dict[str, Any]) -> int:
    async with suite.http.post(
        f"{suite.gateway_url}/wechatpay/notifications", json=notification
    ) as resp:
        return resp.status


async def test_payment_makes_member_and_credits_points(suite: Suite) -> None:
    mall = await seed(suite.member_grpc, DemoMall.unique())
    openid = f"o-{uuid.uuid4().hex}"

    assert await post(suite, payment_notification(mall, openid=openid, amount_fen=12_345)) == 204

    body = await wait_for_balance(suite, mall, openid, 123)
    assert body["lifetime_earned"] == 123
    [entry] = body["ledger"]
    assert entry["kind"] == "credit"
    assert entry["points"] == 123
    assert entry["balance_after"] == 123
    members = await fetchval(
        suite.member_db, "SELECT count(*) FROM members WHERE mall_id = $1", mall.mall_id
    )
    assert members == 1


async def test_same_notification_five_times_credits_once(suite: Suite) -> None:
    mall = await seed(suite.member_grpc, DemoMall.unique())
    openid = f"o-{uuid.uuid4().hex}"
    notification = payment_notification(mall, openid=openid, amount_fen=5_000)

    statuses = [await post(suite, notification) for _ in range(5)]

    assert statuses == [204] * 5
    await wait_for_balance(suite, mall, openid, 50)
    # A later, different payment proves the pipeline has moved past the duplicates.
    assert await post(suite, payment_notification(mall, openid=openid, amount_fen=100)) == 204
    body = await wait_for_balance(suite, mall, openid, 51)
    assert len(body["ledger"]) == 2
    rows = await fetchval(
        suite.points_db, "SELECT count(*) FROM ledger WHERE mall_id = $1", mall.mall_id
    )
    assert rows == 2
