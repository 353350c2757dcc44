"""Rewards bought with points (积分兑换): the stocks open now and redeeming one. The member and
mall come from the session token."""

from __future__ import annotations

from aiohttp import web
from kit.errors import AppError, Unavailable
from prometheus_client import Counter

from gateway.entrypoints import reward_schemas as RW
from gateway.entrypoints import schemas
from gateway.entrypoints.keys import BACKENDS, SESSION
from gateway.service_layer import sessions
from gateway.service_layer.rewards import Rewards

REWARDS = web.AppKey("rewards", Rewards)
NO_STORE = {"Cache-Control": "no-store"}
REDEMPTIONS = Counter(
    "mall_gateway_reward_redemptions_total",
    "Redemptions of points for coupons by outcome: redeemed, or the refusal's code",
    ["outcome"],
)


def _rewards(request: web.Request) -> Rewards:
    rewards = request.app.get(REWARDS)
    if rewards is None:
        raise Unavailable("upstream_unavailable", "coupons are not connected to this gateway")
    return rewards


async def list_rewards(request: web.Request) -> web.Response:
    """``GET /v1/me/rewards[?cursor&limit]``: stocks priced in points, open now."""
    q = schemas.query(request, RW.RewardsQuery)
    rewards = _rewards(request)
    await sessions.member_id_of(request[SESSION], request.app[BACKENDS])  # members only
    found, next_cursor = await rewards.open_rewards(request[SESSION].mall_id, q.cursor, q.limit)
    page = RW.RewardsPage(
        rewards=[RW.Reward.model_validate(r) for r in found], next_cursor=next_cursor
    )
    return schemas.answer(page, headers=NO_STORE)


async def redeem(request: web.Request) -> web.Response:
    """``POST /v1/me/rewards/redeem {stock_id, request_id}``: the coupon bought (201)."""
    body = await schemas.body(request, RW.RedeemBody)
    rewards = _rewards(request)
    member_id = await sessions.member_id_of(request[SESSION], request.app[BACKENDS])
    try:
        done = await rewards.redeem(
            request[SESSION].mall_id, member_id, body.stock_id, body.request_id
        )
    except AppError as exc:
        REDEMPTIONS.labels(exc.code).inc()
        raise
    REDEMPTIONS.labels("redeemed").inc()
    answer = RW.Redeemed(
        coupon=schemas.Coupon.model_validate(done.coupon),
        points_spent=done.points_spent,
        points_balance=done.points_balance,
        redemption_id=done.redemption_id,
    )
    return schemas.answer(answer, status=201, headers=NO_STORE)
