"""Two members found to be one person, merged while both keep paying: member and points,
each following on its own, end with every fen of spend and every point on the survivor."""

from __future__ import annotations

import asyncio
import uuid

from kit.grpc_client import insecure_channel
from mall.member.v1 import member_pb2, member_service_pb2, member_service_pb2_grpc
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc
from mall_testing.demo import DemoMall, payment_notification, seed

from tests.conftest import Suite, fetchval
from tests.test_payment_path import post, wait_for_balance

WAVE = 12  # payments per shopper while the merge runs


async def _member_id(suite: Suite, mall: DemoMall, openid: str) -> str:
    async with insecure_channel(suite.member_grpc) as channel:
        reply = await member_service_pb2_grpc.MemberServiceStub(channel).GetMemberByIdentity(
            member_service_pb2.GetMemberByIdentityRequest(
                mall_id=mall.mall_id,
                identity=member_pb2.Identity(
                    identity_type=member_pb2.IDENTITY_TYPE_OPENID, value=openid
                ),
            ),
            timeout=10,
        )
    return str(reply.member.member_id)


async def _balance(suite: Suite, mall: DemoMall, member_id: str) -> int:
    async with insecure_channel(suite.points_grpc) as channel:
        reply = await points_service_pb2_grpc.PointsServiceStub(channel).GetAccount(
            points_service_pb2.GetAccountRequest(mall_id=mall.mall_id, member_id=member_id),
            timeout=10,
        )
    return int(reply.account.balance)


async def test_a_merge_during_payments_loses_no_spend_and_no_points(suite: Suite) -> None:
    mall = await seed(suite.member_grpc, DemoMall.unique())
    first, second = f"o-{uuid.uuid4().hex}", f"o-{uuid.uuid4().hex}"
    for openid in (first, second):  # two members: the same person under two openids
        assert (
            await post(suite, payment_notification(mall, openid=openid, amount_fen=10_000)) == 204
        )
    await wait_for_balance(suite, mall, first, 100)
    await wait_for_balance(suite, mall, second, 100)
    survivor, absorbed = await _member_id(suite, mall, first), await _member_id(suite, mall, second)
    assert survivor != absorbed

    async def pay(openid: str) -> None:
        for _ in range(WAVE):
            notification = payment_notification(mall, openid=openid, amount_fen=1_000)
            assert await post(suite, notification) == 204

    async def merge() -> None:
        await asyncio.sleep(0.05)  # in the middle of the payments
        async with insecure_channel(suite.member_grpc) as channel:
            await member_service_pb2_grpc.MemberServiceStub(channel).MergeMembers(
                member_service_pb2.MergeMembersRequest(
                    mall_id=mall.mall_id,
                    survivor_member_id=survivor,
                    merged_member_id=absorbed,
                    merge_request_id=uuid.uuid4().hex,
                    operator="ops-test",
                    reason="same phone",
                ),
                timeout=10,
            )

    await asyncio.gather(pay(first), pay(second), merge())

    expected_points = 2 * 100 + 2 * WAVE * 10
    for _ in range(600):  # up to 30 s on a loaded machine
        if await _balance(suite, mall, survivor) == expected_points:
            break
        await asyncio.sleep(0.05)
    assert await _balance(suite, mall, survivor) == expected_points
    assert await _balance(suite, mall, absorbed) == 0
    assert await _member_id(suite, mall, second) == survivor  # the openid follows the person
    spend = await fetchval(
        suite.member_db,
        "SELECT sum(amount_fen) FROM payments WHERE mall_id = $1 AND member_id = $2",
        mall.mall_id,
        uuid.UUID(survivor),
    )
    assert spend == 2 * 10_000 + 2 * WAVE * 1_000
