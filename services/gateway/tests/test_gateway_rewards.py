"""Rewards bought with points (积分兑换) through the real gateway, with the real member, points
and coupons services on real PostgreSQL and NATS: redeem → the coupon in the wallet and the
price debited once; a retried request_id → the same coupon, no second debit (also after a
gateway "crashed" between the steps); too few points → insufficient_points, nothing held; a
sold-out stock → the hold released; concurrent redeems against a limit of one → one coupon, one
debit; the rewards open now. And the orchestration alone with a fake backend: an unknown claim
outcome keeps the hold for the retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from coupons.bootstrap import MIGRATIONS as COUPONS_MIGRATIONS
from coupons.bootstrap import bootstrap as coupons_bootstrap
from coupons.config import Settings as CouponsSettings
from gateway.adapters.tokens import SessionTokens
from gateway.bootstrap import bootstrap as gateway_bootstrap
from gateway.config import Settings as GatewaySettings
from gateway.domain.rewards import RewardStock, hold_key
from gateway.domain.shoppers import Session
from gateway.service_layer.rewards import Rewards
from kit.cli import running
from kit.errors import AppError, Conflict, Unavailable
from kit.migrations import migrate
from kit.proto import timestamp
from mall.coupons.v1 import coupons_pb2, coupons_service_pb2, coupons_service_pb2_grpc
from mall.member.v1 import member_pb2, member_service_pb2, member_service_pb2_grpc
from mall.points.v1 import points_pb2, points_service_pb2, points_service_pb2_grpc
from mall_testing.demo import DemoMall, seed
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from member.bootstrap import bootstrap as member_bootstrap
from member.config import Settings as MemberSettings
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.bootstrap import bootstrap as points_bootstrap
from points.config import Settings as PointsSettings

PROBLEM = "application/problem+json"
REDEEM = "/v1/me/rewards/redeem"


async def _port(get: Any) -> int:
    for _ in range(500):
        if port := get():
            return int(port)
        await asyncio.sleep(0.01)
    raise RuntimeError("a server never bound its port")


@dataclass
class Stack:
    url: str
    http: aiohttp.ClientSession
    mall: DemoMall
    tokens: SessionTokens
    members: member_service_pb2_grpc.MemberServiceAsyncStub
    points: points_service_pb2_grpc.PointsServiceAsyncStub
    coupons: coupons_service_pb2_grpc.CouponsServiceAsyncStub

    async def call(
        self, method: str, path: str, *, token: str, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 400:
                assert resp.content_type == PROBLEM, data
            return resp.status, data

    async def shopper(self, points: int) -> tuple[str, str]:
        """A member joined through member's API with ``points`` (an adjustment): (access
        token, member id), the token minted as POST /v1/session would."""
        openid = f"o-{uuid.uuid4().hex}"
        reply = await self.members.JoinMember(
            member_service_pb2.JoinMemberRequest(
                mall_id=self.mall.mall_id,
                identity=member_pb2.Identity(
                    identity_type=member_pb2.IDENTITY_TYPE_OPENID, value=openid
                ),
                channel=member_pb2.JOIN_CHANNEL_MINI_PROGRAM,
                phone=f"+86137{secrets.randbelow(10**8):08d}",
            ),
            timeout=10,
        )
        member_id = reply.member.member_id
        if points:
            await self.points.AdjustPoints(
                points_service_pb2.AdjustPointsRequest(
                    mall_id=self.mall.mall_id,
                    member_id=member_id,
                    points=points,
                    reason="test grant",
                    operator="test",
                    request_id=uuid.uuid4().hex,
                ),
                timeout=10,
            )
        session = Session(self.mall.mall_id, openid, member_id)
        return self.tokens.issue(session).access_token, member_id

    async def account(self, member_id: str) -> points_pb2.Account:
        reply = await self.points.GetAccount(
            points_service_pb2.GetAccountRequest(mall_id=self.mall.mall_id, member_id=member_id),
            timeout=10,
        )
        return reply.account

    async def redemptions(self, member_id: str) -> list[points_pb2.LedgerEntry]:
        reply = await self.points.ListLedger(
            points_service_pb2.ListLedgerRequest(mall_id=self.mall.mall_id, member_id=member_id),
            timeout=10,
        )
        return [e for e in reply.entries if e.kind == points_pb2.LEDGER_ENTRY_KIND_REDEMPTION]

    async def stock(self, **fields: Any) -> str:
        now = datetime.now(UTC)
        base: dict[str, Any] = {
            "mall_id": self.mall.mall_id,
            "title": "积分换20元券",
            "coupon_type": coupons_pb2.COUPON_TYPE_FIXED_AMOUNT,
            "discount_fen": 2000,
            "threshold_fen": 10000,
            "max_coupons": 100,
            "max_per_member": 1,
            "claim_starts_at": timestamp(now - timedelta(hours=1)),
            "claim_ends_at": timestamp(now + timedelta(days=1)),
            "valid_days": 30,
            "points_price": 200,
        }
        base.update(fields)
        reply = await self.coupons.CreateStock(
            coupons_service_pb2.CreateStockRequest(
                stock=coupons_pb2.Stock(**base), request_id=uuid.uuid4().hex
            )
        )
        return str(reply.stock.stock_id)

    async def wallet(self, token: str) -> list[dict[str, Any]]:
        status, page = await self.call("GET", "/v1/me/coupons?limit=100", token=token)
        assert status == 200, page
        coupons: list[dict[str, Any]] = page["coupons"]
        return coupons


@pytest.fixture(scope="module")
async def stack(
    fresh_database: FreshDatabase, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    member_db, points_db = await fresh_database("member"), await fresh_database("points")
    coupons_db = await fresh_database("coupons")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    await migrate(coupons_db, COUPONS_MIGRATIONS)
    common: dict[str, Any] = {
        "nats_url": nats_url, "grpc_port": 0, "log_format": "console", "log_level": "warning"
    }  # fmt: skip
    mall = DemoMall.unique()
    folder: Path = tmp_path_factory.mktemp("gateway-rewards")
    (folder / "miniprograms.json").write_text(json.dumps({mall.appid: secrets.token_hex(16)}))
    signing_key = secrets.token_urlsafe(48)
    async with contextlib.AsyncExitStack() as stack:
        member = await stack.enter_async_context(
            member_bootstrap(MemberSettings(database_url=member_db, **common))
        )
        await stack.enter_async_context(running(member))
        points = await stack.enter_async_context(
            points_bootstrap(PointsSettings(database_url=points_db, **common))
        )
        await stack.enter_async_context(running(points, ("serve",)))
        coupons = await stack.enter_async_context(
            coupons_bootstrap(CouponsSettings(database_url=coupons_db, **common))
        )
        await stack.enter_async_context(running(coupons, ("serve",)))
        member_port = await _port(lambda: member.grpc.port if member.grpc else 0)
        points_port = await _port(lambda: points.grpc.port if points.grpc else 0)
        coupons_port = await _port(lambda: coupons.grpc.port if coupons.grpc else 0)
        await seed(f"127.0.0.1:{member_port}", mall)
        gateway = await stack.enter_async_context(
            gateway_bootstrap(
                GatewaySettings(
                    nats_url=nats_url,
                    http_port=0,
                    member_grpc_target=f"127.0.0.1:{member_port}",
                    points_grpc_target=f"127.0.0.1:{points_port}",
                    coupons_grpc_target=f"127.0.0.1:{coupons_port}",
                    miniprogram_secrets_file=folder / "miniprograms.json",
                    session_signing_key=signing_key,  # type: ignore[arg-type]
                    rate_limit_per_ip="",
                    rate_limit_per_member="",
                    log_format="console",
                    log_level="warning",
                )
            )
        )
        await stack.enter_async_context(running(gateway))
        http_port = await _port(lambda: gateway.http.port)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        member_channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{member_port}")
        )
        points_channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{points_port}")
        )
        coupons_channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{coupons_port}")
        )
        yield Stack(
            f"http://127.0.0.1:{http_port}",
            http,
            mall,
            SessionTokens(signing_key, access_ttl_s=3600, refresh_ttl_s=3600),
            member_service_pb2_grpc.MemberServiceStub(member_channel),
            points_service_pb2_grpc.PointsServiceStub(points_channel),
            coupons_service_pb2_grpc.CouponsServiceStub(coupons_channel),
        )


# -- redeeming ---------------------------------------------------------------------------------


async def test_redeem_puts_the_coupon_in_the_wallet_and_debits_the_price_once(
    stack: Stack,
) -> None:
    stock_id = await stack.stock(points_price=200, max_per_member=3)
    token, member_id = await stack.shopper(500)
    body = {"stock_id": stock_id, "request_id": uuid.uuid4().hex}

    status, redeemed = await stack.call("POST", REDEEM, token=token, body=body)

    assert status == 201, redeemed
    coupon = redeemed["coupon"]
    assert (coupon["stock_id"], coupon["channel"], coupon["status"]) == (
        stock_id,
        "points",
        "available",
    )
    assert (redeemed["points_spent"], redeemed["points_balance"]) == (200, 300)
    account = await stack.account(member_id)
    assert (account.balance, account.held, account.available) == (300, 0, 300)
    assert [c["coupon_id"] for c in await stack.wallet(token)] == [coupon["coupon_id"]]

    # The same request_id again (the app retried): the same coupon, no second debit.
    status, again = await stack.call("POST", REDEEM, token=token, body=body)

    assert status == 201, again
    assert again["coupon"]["coupon_id"] == coupon["coupon_id"]
    assert again["redemption_id"] == redeemed["redemption_id"]
    account = await stack.account(member_id)
    assert (account.balance, account.held) == (300, 0)
    assert [c["coupon_id"] for c in await stack.wallet(token)] == [coupon["coupon_id"]]
    assert [e.points for e in await stack.redemptions(member_id)] == [-200]


async def test_too_few_points_is_insufficient_points_and_nothing_is_held(stack: Stack) -> None:
    stock_id = await stack.stock(points_price=200)
    token, member_id = await stack.shopper(150)

    status, problem = await stack.call(
        "POST", REDEEM, token=token, body={"stock_id": stock_id, "request_id": uuid.uuid4().hex}
    )

    assert (status, problem["code"]) == (409, "insufficient_points"), problem
    account = await stack.account(member_id)
    assert (account.balance, account.held, account.available) == (150, 0, 150)
    assert await stack.wallet(token) == []
    assert await stack.redemptions(member_id) == []


async def test_a_sold_out_stock_releases_the_hold(stack: Stack) -> None:
    stock_id = await stack.stock(points_price=100, max_coupons=1)
    first, _ = await stack.shopper(300)
    token, member_id = await stack.shopper(300)
    status, _ = await stack.call(
        "POST", REDEEM, token=first, body={"stock_id": stock_id, "request_id": "first"}
    )
    assert status == 201

    status, problem = await stack.call(
        "POST", REDEEM, token=token, body={"stock_id": stock_id, "request_id": "second"}
    )

    assert (status, problem["code"]) == (409, "sold_out"), problem
    assert problem["reason"].startswith("stock_sold_out")
    account = await stack.account(member_id)
    assert (account.balance, account.held, account.available) == (300, 0, 300)
    assert await stack.wallet(token) == []
    assert await stack.redemptions(member_id) == []


async def test_concurrent_redeems_against_a_limit_of_one_buy_one_coupon_debit_once(
    stack: Stack,
) -> None:
    stock_id = await stack.stock(points_price=100, max_per_member=1)
    token, member_id = await stack.shopper(1000)

    async def press(i: int) -> tuple[int, dict[str, Any]]:
        body = {"stock_id": stock_id, "request_id": f"tap-{i}"}
        return await stack.call("POST", REDEEM, token=token, body=body)

    answers = await asyncio.gather(*(press(i) for i in range(8)))

    assert sorted(status for status, _ in answers) == [201] + [409] * 7, answers
    assert {a["code"] for status, a in answers if status == 409} == {"limit_reached"}
    account = await stack.account(member_id)
    assert (account.balance, account.held, account.available) == (900, 0, 900)
    assert len(await stack.wallet(token)) == 1
    assert [e.points for e in await stack.redemptions(member_id)] == [-100]


async def test_a_stock_for_other_tiers_is_not_eligible_and_releases_the_hold(
    stack: Stack,
) -> None:
    stock_id = await stack.stock(points_price=100, audience_tiers=["gold-only-tier"])
    token, member_id = await stack.shopper(300)

    status, problem = await stack.call(
        "POST", REDEEM, token=token, body={"stock_id": stock_id, "request_id": "gold"}
    )

    assert (status, problem["code"], problem["reason"]) == (
        403,
        "not_eligible",
        "tier_not_eligible",
    )
    account = await stack.account(member_id)
    assert (account.balance, account.held, account.available) == (300, 0, 300)
    assert await stack.wallet(token) == []


async def test_a_member_who_never_had_points_is_insufficient_points(stack: Stack) -> None:
    stock_id = await stack.stock(points_price=1)
    token, member_id = await stack.shopper(0)

    status, problem = await stack.call(
        "POST", REDEEM, token=token, body={"stock_id": stock_id, "request_id": "none"}
    )

    assert (status, problem["code"], problem["available"]) == (409, "insufficient_points", "0")
    assert (await stack.account(member_id)).held == 0
    assert await stack.wallet(token) == []


async def test_a_retry_after_a_crash_between_claim_and_confirm_debits_once(
    stack: Stack,
) -> None:
    """A gateway held the points and claimed the coupon, then died before ConfirmHold: the
    app's retry with the same request_id confirms that hold for that coupon."""
    stock_id = await stack.stock(points_price=120)
    token, member_id = await stack.shopper(400)
    request_id = uuid.uuid4().hex
    mall_id = stack.mall.mall_id
    hold = await stack.points.HoldPoints(
        points_service_pb2.HoldPointsRequest(
            mall_id=mall_id,
            member_id=member_id,
            points=120,
            reward_kind=points_pb2.REWARD_KIND_COUPON,
            reward_ref=stock_id,
            request_id=hold_key(member_id, request_id),
        )
    )
    claimed = await stack.coupons.ClaimCoupon(
        coupons_service_pb2.ClaimCouponRequest(
            mall_id=mall_id,
            stock_id=stock_id,
            member_id=member_id,
            request_id=request_id,
            channel=coupons_pb2.CLAIM_CHANNEL_POINTS,
            points_hold_id=hold.hold_id,
        )
    )
    assert (await stack.account(member_id)).held == 120

    status, redeemed = await stack.call(
        "POST", REDEEM, token=token, body={"stock_id": stock_id, "request_id": request_id}
    )

    assert status == 201, redeemed
    assert redeemed["coupon"]["coupon_id"] == claimed.coupon.coupon_id
    account = await stack.account(member_id)
    assert (account.balance, account.held) == (280, 0)
    assert [e.points for e in await stack.redemptions(member_id)] == [-120]


async def test_a_coupon_claimed_after_its_hold_was_released_is_paid_once(stack: Stack) -> None:
    """The hold of a request_id was given back (an earlier claim was refused), and the retry's
    claim now succeeds: the coupon is paid with a second hold, once, also when retried."""
    stock_id = await stack.stock(points_price=90)
    token, member_id = await stack.shopper(200)
    request_id = uuid.uuid4().hex
    hold = await stack.points.HoldPoints(
        points_service_pb2.HoldPointsRequest(
            mall_id=stack.mall.mall_id,
            member_id=member_id,
            points=90,
            reward_kind=points_pb2.REWARD_KIND_COUPON,
            reward_ref=stock_id,
            request_id=hold_key(member_id, request_id),
        )
    )
    await stack.points.ReleaseHold(
        points_service_pb2.ReleaseHoldRequest(
            mall_id=stack.mall.mall_id, hold_id=hold.hold_id, reason="claim refused"
        )
    )
    body = {"stock_id": stock_id, "request_id": request_id}

    first = await stack.call("POST", REDEEM, token=token, body=body)
    again = await stack.call("POST", REDEEM, token=token, body=body)

    assert [status for status, _ in (first, again)] == [201, 201], (first, again)
    assert first[1]["coupon"]["coupon_id"] == again[1]["coupon"]["coupon_id"]
    account = await stack.account(member_id)
    assert (account.balance, account.held) == (110, 0)
    assert [e.points for e in await stack.redemptions(member_id)] == [-90]


async def test_refusals_before_any_hold(stack: Stack) -> None:
    free_stock = await stack.stock(points_price=0)
    token, member_id = await stack.shopper(500)

    not_for_points = await stack.call(
        "POST", REDEEM, token=token, body={"stock_id": free_stock, "request_id": "a"}
    )
    missing = await stack.call(
        "POST", REDEEM, token=token, body={"stock_id": "no-such-stock", "request_id": "b"}
    )
    invalid = await stack.call("POST", REDEEM, token=token, body={"stock_id": free_stock})

    assert (not_for_points[0], not_for_points[1]["code"]) == (409, "not_for_points")
    assert (missing[0], missing[1]["code"]) == (404, "stock_not_found")
    assert (invalid[0], invalid[1]["code"]) == (400, "invalid_request_id")
    assert (await stack.account(member_id)).held == 0


async def test_rewards_lists_points_stocks_open_now(stack: Stack) -> None:
    now = datetime.now(UTC)
    reward = await stack.stock(points_price=300, title="积分换停车券")
    free = await stack.stock(points_price=0)
    later = await stack.stock(points_price=300, claim_starts_at=timestamp(now + timedelta(days=1)))
    token, _ = await stack.shopper(0)

    listed: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(20):
        status, page = await stack.call(
            "GET", f"/v1/me/rewards?limit=100&cursor={cursor}", token=token
        )
        assert status == 200, page
        listed += page["rewards"]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]

    by_id = {r["stock_id"]: r for r in listed}
    assert reward in by_id
    assert (by_id[reward]["points_price"], by_id[reward]["title"]) == (300, "积分换停车券")
    assert free not in by_id
    assert later not in by_id
    assert all(r["points_price"] > 0 for r in listed)


# -- the orchestration alone -------------------------------------------------------------------


class FakeBackend:
    def __init__(self, claim_error: AppError | None) -> None:
        self.claim_error = claim_error
        self.calls: list[str] = []

    async def stock(self, mall_id: str, stock_id: str) -> RewardStock | None:
        return RewardStock(stock_id, 50)

    async def profile(self, mall_id: str, member_id: str) -> tuple[str, tuple[str, ...]]:
        raise AssertionError("a stock for anyone needs no profile")

    async def hold(
        self, mall_id: str, member_id: str, points: int, stock_id: str, key: str
    ) -> tuple[str, int]:
        self.calls.append(f"hold {points} {key}")
        return "h1", 0

    async def claim(self, *args: Any) -> dict[str, Any]:
        self.calls.append("claim")
        if self.claim_error is not None:
            raise self.claim_error
        return {"coupon_id": "c1"}

    async def confirm(self, mall_id: str, hold_id: str) -> tuple[str, int]:
        self.calls.append(f"confirm {hold_id}")
        return "r1", 0

    async def release(self, mall_id: str, hold_id: str, reason: str) -> None:
        self.calls.append(f"release {hold_id}")

    async def open_rewards(self, *args: Any) -> tuple[list[RewardStock], str | None]:
        return [], None


@pytest.mark.parametrize(
    ("error", "after_claim"),
    [
        (Unavailable("upstream_unavailable", "timeout"), []),  # unknown: the retry settles it
        (Conflict("limit_reached", "held"), ["release h1"]),  # refused: give the points back
    ],
)
async def test_an_unknown_claim_outcome_keeps_the_hold_a_refusal_releases_it(
    error: AppError, after_claim: list[str]
) -> None:
    backend = FakeBackend(error)

    with pytest.raises(AppError) as raised:
        await Rewards(backend).redeem("m", "member", "s", "req")

    assert raised.value.code == error.code
    assert backend.calls == ["hold 50 reward:member:req", "claim", *after_claim]
