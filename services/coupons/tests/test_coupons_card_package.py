"""The WeChat card package mirror on the real coupons service: a stock flagged for it is created
as a platform merchant coupon (商家券) in the WeChat Pay simulator; a claim (the core's own
ClaimCoupon RPC) sends the coupon to the shopper's card package, a redemption uses it, a
revocation deactivates it. Platform failures are retried and never block the claim.

Real PostgreSQL, real NATS JetStream (the core's events go out through its outbox relay and
come back through the card package consumer), the simulator verifying merchant signatures.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import grpc
import nats
import pytest
from coupons.adapters.card_package_platform import WeChatMerchantCoupons
from coupons.bootstrap import MIGRATIONS, bootstrap
from coupons.commitment_settings import CommitmentSettings
from coupons.config import Settings
from coupons.domain.card_package import (
    Action,
    StockTerms,
    Wanted,
    coupon_code,
    next_action,
    settle,
    stock_request,
)
from coupons.entrypoints.card_package import card_package_commands, on_coupon_events
from coupons.service_layer.card_package import CardPackageWorker, MirrorPolicy
from eventbus.consumer import Delivery
from kit.cli import serving
from kit.credentials import hash_secret
from kit.errors import InvalidInput
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.migrations import migrate
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.coupons.v1 import coupons_pb2, coupons_service_pb2, coupons_service_pb2_grpc, events_pb2
from mall.member.v1 import directory_pb2
from mall.member.v1 import events_pb2 as member_events
from mall_testing.plugin import FreshDatabase
from nats.js.client import JetStreamContext
from wechatpay import signing
from wechatpay.client import WeChatPayClient
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import Merchant
from wechatpay_simulator.config import Settings as SimulatorSettings

MCHID = "1900009902"
APPID = "wx0cardpackage0001"
FAST = MirrorPolicy(
    batch_size=20, lease_s=5, send_timeout_s=3, retry_base_s=0.01, retry_max_s=0.05,
    poll_interval_s=0.05,
)  # fmt: skip

# -- the rules -------------------------------------------------------------------------------


def test_each_step_moves_the_platform_one_call_closer() -> None:
    assert next_action("sent", "none") is Action.SEND
    assert next_action("used", "none") is Action.SEND  # sent first, then used
    assert next_action("used", "sent") is Action.USE
    assert next_action("deactivated", "sent") is Action.DEACTIVATE
    assert next_action("deactivated", "none") is Action.SKIP  # never sent: nothing to undo
    assert next_action("sent", "sent") is None
    assert next_action("deactivated", "used") is None  # used is used
    assert next_action("sent", "used") is Action.RETURN  # its order refunded: usable again
    assert next_action("sent", "deactivated") is None  # final at the platform


def test_the_first_final_wish_wins_and_sent_never_overrides_one() -> None:
    assert settle(None, Wanted.SENT) is Wanted.SENT
    assert settle(Wanted.SENT, Wanted.USED) is Wanted.USED
    assert settle(Wanted.SENT, Wanted.DEACTIVATED) is Wanted.DEACTIVATED
    assert settle(Wanted.USED, Wanted.SENT) is Wanted.USED
    assert settle(Wanted.USED, Wanted.DEACTIVATED) is Wanted.USED
    assert settle(Wanted.DEACTIVATED, Wanted.USED) is Wanted.DEACTIVATED


def test_stock_requests_follow_the_platforms_kinds() -> None:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    terms = StockTerms("满100减10", "", "fixed_amount", 1000, 10000, 0, 500, 1, now, now)
    body = stock_request(terms, mchid=MCHID, out_request_no="r1")
    assert body["stock_type"] == "NORMAL"
    assert body["coupon_use_rule"]["fixed_normal_coupon"] == {
        "discount_amount": 1000,
        "transaction_minimum": 10000,
    }
    assert body["stock_send_rule"] == {"max_coupons": 500, "max_coupons_per_user": 1}
    assert body["coupon_code_mode"] == "MERCHANT_API"
    off = StockTerms("85折", "", "percent_off", 0, 0, 15, 10, 0, now, now + timedelta(days=1))
    rule = stock_request(off, mchid=MCHID, out_request_no="r2")["coupon_use_rule"]
    assert rule["discount_coupon"]["discount_percent"] == 85
    parking = StockTerms("停车2小时", "", "parking", 0, 0, 0, 10, 0, now, now)
    with pytest.raises(InvalidInput):
        stock_request(parking, mchid=MCHID, out_request_no="r3")


# -- the service -----------------------------------------------------------------------------


@dataclass
class World:
    url: str
    coupons: coupons_service_pb2_grpc.CouponsServiceAsyncStub
    js: JetStreamContext
    sim: Running
    platform: WeChatPayClient
    pool: asyncpg.Pool


@pytest.fixture(scope="module")
async def world(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[World]:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    merchant_key = signing.generate_private_key()
    sim_settings = SimulatorSettings.create([Merchant(MCHID, public_key=merchant_key.public_key())])
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    # No platform in the service's own settings: the test drives the worker itself.
    commitments = CommitmentSettings(commitment_sweep_interval_s=3600, wechatpay_api_base="")
    nc = await nats.connect(nats_url)
    async with (
        serve(sim_settings) as sim,
        bootstrap(settings, commitments) as roles,
        serving(roles, ("serve", "consume", "relay")) as target,
        grpc.aio.insecure_channel(target) as channel,
        asyncpg.create_pool(url, min_size=1, max_size=6) as pool,
    ):
        merchant = sim.settings.merchant_map()[MCHID]
        assert merchant.serial_no is not None
        platform = WeChatPayClient(
            base_url=sim.url,
            mchid=MCHID,
            serial_no=merchant.serial_no,
            private_key=merchant_key,
            platform_keys={sim.settings.platform_serial: sim.settings.platform_public_key},
        )
        async with platform:
            yield World(
                url,
                coupons_service_pb2_grpc.CouponsServiceStub(channel),
                nc.jetstream(),
                sim,
                platform,
                pool,
            )
    await nc.close()


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def control(world: World, method: str, path: str, **kw: Any) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, world.sim.url + path, **kw) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def platform_coupons(world: World, openid: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (
        await control(world, "GET", "/control/busifavor/coupons", params={"openid": openid})
    )["coupons"]
    return found


def worker(world: World) -> CardPackageWorker:
    return CardPackageWorker(world.pool, WeChatMerchantCoupons(world.platform), policy=FAST)


async def create_stock(world: World, mall_id: str, **over: Any) -> str:
    now = datetime.now(UTC)
    stock = coupons_pb2.Stock(
        mall_id=mall_id,
        tenant_id="tea",
        title="满100减10",
        coupon_type=coupons_pb2.COUPON_TYPE_FIXED_AMOUNT,
        discount_fen=1000,
        threshold_fen=10000,
        max_coupons=100,
        claim_starts_at=timestamp(now - timedelta(hours=1)),
        claim_ends_at=timestamp(now + timedelta(days=30)),
        valid_days=30,
        **over,
    )
    reply = await world.coupons.CreateStock(
        coupons_service_pb2.CreateStockRequest(stock=stock, request_id=str(uuid.uuid4()))
    )
    return reply.stock.stock_id


async def enable(world: World, mall_id: str, stock_id: str) -> None:
    command = card_package_commands(world.pool.acquire, MCHID)["card-package-enable"]
    assert await command([mall_id, stock_id]) == 0


async def wechat_payer(world: World, mall_id: str, member_id: str, openid: str) -> None:
    """A WeChat Pay payment of the member: how coupons learns who they are at WeChat."""
    message = member_events.PaymentAttributed(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=member_id,
        store_id="s1",
        amount_fen=100,
        transaction_id=f"4200{uuid.uuid4().hex[:24]}",
        source=common_pb2.PAYMENT_SOURCE_WECHAT_PAY,
        appid=APPID,
        openid=openid,
        paid_at=timestamp(datetime.now(UTC)),
    )
    await world.js.publish(
        "member.payment.attributed",
        message.SerializeToString(),
        headers={"Nats-Msg-Id": message.event_id},
    )


async def claim(world: World, mall_id: str, stock_id: str, member_id: str) -> str:
    reply = await world.coupons.ClaimCoupon(
        coupons_service_pb2.ClaimCouponRequest(
            mall_id=mall_id, stock_id=stock_id, member_id=member_id, request_id=str(uuid.uuid4())
        )
    )
    return reply.coupon.coupon_id


async def mirror_row(world: World, mall_id: str, coupon_id: str) -> asyncpg.Record | None:
    async with world.pool.acquire() as conn:
        return await conn.fetchrow(
            "SELECT * FROM card_package_coupons WHERE mall_id = $1 AND coupon_id = $2",
            mall_id,
            coupon_id,
        )


async def synced(world: World, mall_id: str, coupon_id: str, platform: str) -> None:
    w = worker(world)

    async def done() -> bool:
        await w.deliver_due()
        row = await mirror_row(world, mall_id, coupon_id)
        return row is not None and (row["status"], row["platform"]) == ("synced", platform)

    await eventually(done, f"coupon {coupon_id} {platform} at the platform")


async def publish(world: World, subject: str, message: Any) -> None:
    """An event as the coupons core publishes it (its outbox relay: Nats-Msg-Id = event_id)."""
    message.event_id = str(uuid.uuid4())
    message.occurred_at.FromDatetime(datetime.now(UTC))
    await world.js.publish(
        subject, message.SerializeToString(), headers={"Nats-Msg-Id": message.event_id}
    )


async def test_a_flagged_stocks_coupon_is_sent_used_and_another_deactivated(
    world: World, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    stock_id = await create_stock(world, mall_id)
    await enable(world, mall_id, stock_id)
    buyer, quitter = str(uuid.uuid4()), str(uuid.uuid4())
    for member in (buyer, quitter):
        await wechat_payer(world, mall_id, member, f"o-{member[:8]}")

    kept, dropped = (
        await claim(world, mall_id, stock_id, buyer),
        await claim(world, mall_id, stock_id, quitter),
    )
    await synced(world, mall_id, kept, "sent")
    await synced(world, mall_id, dropped, "sent")

    stocks = (await control(world, "GET", "/control/busifavor/stocks"))["stocks"]
    mirrored = await mirror_stock(world, mall_id, stock_id)
    [created] = [s for s in stocks if s["stock_id"] == mirrored["platform_stock_id"]]
    assert created["request"]["out_request_no"] == mirrored["out_request_no"]
    assert created["request"]["coupon_use_rule"]["fixed_normal_coupon"]["discount_amount"] == 1000
    [sent] = await platform_coupons(world, f"o-{buyer[:8]}")
    assert (sent["coupon_code"], sent["coupon_state"], sent["appid"]) == (
        coupon_code(mall_id, kept),
        "SENDED",
        APPID,
    )

    # Used at the tenant's store through the core's RedeemCoupon (its coupons.coupon.redeemed),
    # revoked (coupons.coupon.revoked, as the core publishes it after a refund).
    await redeem(world, mall_id, kept)
    await publish(
        world,
        "coupons.coupon.revoked",
        events_pb2.CouponRevoked(
            mall_id=mall_id, coupon_id=dropped, stock_id=stock_id, member_id=quitter
        ),
    )

    async def wished() -> bool:
        rows = [await mirror_row(world, mall_id, c) for c in (kept, dropped)]
        return [r["wanted"] if r else None for r in rows] == ["used", "deactivated"]

    await eventually(wished, "the redemption and the revocation recorded")
    await synced(world, mall_id, kept, "used")
    await synced(world, mall_id, dropped, "deactivated")
    assert [c["coupon_state"] for c in await platform_coupons(world, f"o-{buyer[:8]}")] == ["USED"]
    assert [c["coupon_state"] for c in await platform_coupons(world, f"o-{quitter[:8]}")] == [
        "DEACTIVATED"
    ]

    # The order it was used on is refunded: the coupon is usable again (coupons.coupon.returned),
    # so it is returned at the platform (退券), then used once more with a new use request.
    await publish(
        world,
        "coupons.coupon.returned",
        events_pb2.CouponReturned(
            mall_id=mall_id, coupon_id=kept, stock_id=stock_id, member_id=buyer
        ),
    )

    async def returned() -> bool:
        row = await mirror_row(world, mall_id, kept)
        return row is not None and row["wanted"] == "sent"

    await eventually(returned, "the return recorded")
    await synced(world, mall_id, kept, "sent")
    assert [c["coupon_state"] for c in await platform_coupons(world, f"o-{buyer[:8]}")] == [
        "SENDED"
    ]
    await publish(
        world,
        "coupons.coupon.redeemed",
        events_pb2.CouponRedeemed(
            mall_id=mall_id, coupon_id=kept, stock_id=stock_id, member_id=buyer, store_id="s1"
        ),
    )
    await eventually(lambda: wanted_is(world, mall_id, kept, "used"), "the second use recorded")
    await synced(world, mall_id, kept, "used")
    assert [c["coupon_state"] for c in await platform_coupons(world, f"o-{buyer[:8]}")] == ["USED"]


async def redeem(world: World, mall_id: str, coupon_id: str) -> None:
    """The tenant's POS redeems the coupon (核销); its store and credential reach coupons the
    way they do in production, through member's DIRECTORY bucket."""
    secret, credential_id = uuid.uuid4().hex, f"cred-{uuid.uuid4().hex[:12]}"
    kv = await open_bucket(world.js, DIRECTORY_BUCKET)
    store = directory_pb2.Store(mall_id=mall_id, tenant_id="tea", store_id="s1")
    await kv.put(f"store.{mall_id}.s1", store.SerializeToString())
    credential = directory_pb2.Credential(
        mall_id=mall_id,
        credential_id=credential_id,
        tenant_id="tea",
        secret_hash=await asyncio.to_thread(hash_secret, secret),
    )
    await kv.put(f"credential.{mall_id}.{credential_id}", credential.SerializeToString())
    request = coupons_service_pb2.RedeemCouponRequest(
        mall_id=mall_id,
        coupon_id=coupon_id,
        store_id="s1",
        use_request_id=str(uuid.uuid4()),
        order_amount_fen=12000,
    )
    metadata = (("x-mall-credential", f"{credential_id}.{secret}"),)

    async def redeemed() -> bool:
        try:
            reply = await world.coupons.RedeemCoupon(request, metadata=metadata)
        except grpc.aio.AioRpcError as error:  # until the directory copy has the credential
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            return False
        return bool(reply.discount_fen == 1000)

    await eventually(redeemed, "the redemption")


async def wanted_is(world: World, mall_id: str, coupon_id: str, wanted: str) -> bool:
    row = await mirror_row(world, mall_id, coupon_id)
    return row is not None and row["wanted"] == wanted


async def mirror_stock(world: World, mall_id: str, stock_id: str) -> asyncpg.Record:
    async with world.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT * FROM card_package_stocks WHERE mall_id = $1 AND stock_id = $2",
            mall_id,
            stock_id,
        )
    assert row is not None
    return row


async def test_platform_failures_never_block_the_claim_and_are_retried(
    world: World, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    stock_id = await create_stock(world, mall_id)
    await enable(world, mall_id, stock_id)
    member = str(uuid.uuid4())
    await wechat_payer(world, mall_id, member, f"o-{member[:8]}")
    # The platform is down for the stock creation and the next sends.
    for operation in ("create_stock", "send"):
        fault = {"operation": operation, "fail_next": 2}
        await control(world, "POST", "/control/busifavor/faults", json=fault)

    coupon_id = await claim(world, mall_id, stock_id, member)  # answered at once

    async def recorded() -> bool:
        return await mirror_row(world, mall_id, coupon_id) is not None

    await eventually(recorded, "the claim recorded for the card package")
    await synced(world, mall_id, coupon_id, "sent")
    stock = await mirror_stock(world, mall_id, stock_id)
    assert stock["state"] == "created"
    assert stock["attempts"] == 3
    row = await mirror_row(world, mall_id, coupon_id)
    assert row is not None
    assert row["attempts"] == 3
    assert row["last_error_code"] == ""
    assert [c["coupon_state"] for c in await platform_coupons(world, f"o-{member[:8]}")] == [
        "SENDED"
    ]


async def test_a_refusal_stops_the_coupon_for_ops_and_others_go_on(
    world: World, unique_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    mall_id = f"mall-{unique_id}"
    stock_id = await create_stock(world, mall_id)
    await enable(world, mall_id, stock_id)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    for member in (first, second):
        await wechat_payer(world, mall_id, member, f"o-{member[:8]}")
    await synced(world, mall_id, await claim(world, mall_id, stock_id, first), "sent")
    await control(
        world,
        "POST",
        "/control/busifavor/faults",
        json={"operation": "send", "fail_next": 1, "status": 400},
    )
    refused_id = await claim(world, mall_id, stock_id, second)
    w = worker(world)

    async def refused() -> bool:
        await w.deliver_due()
        row = await mirror_row(world, mall_id, refused_id)
        return row is not None and row["status"] == "refused"

    await eventually(refused, "the refusal recorded")
    row = await mirror_row(world, mall_id, refused_id)
    assert row is not None
    assert row["last_error_code"] == "PARAM_ERROR"
    status = card_package_commands(world.pool.acquire, MCHID)["card-package-status"]
    assert await status([mall_id]) == 0
    out = capsys.readouterr().out
    assert refused_id in out
    assert '"refused"' in out


async def test_coupons_of_unflagged_stocks_are_not_mirrored_and_wait_for_the_payer(
    world: World, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    plain = await create_stock(world, mall_id)
    flagged = await create_stock(world, mall_id)
    await enable(world, mall_id, flagged)
    member = str(uuid.uuid4())
    plain_coupon = await claim(world, mall_id, plain, member)
    flagged_coupon = await claim(world, mall_id, flagged, member)

    async def recorded() -> bool:
        return await mirror_row(world, mall_id, flagged_coupon) is not None

    await eventually(recorded, "the flagged coupon recorded")
    await worker(world).deliver_due()
    row = await mirror_row(world, mall_id, flagged_coupon)
    assert row is not None
    assert (row["status"], row["platform"]) == ("pending", "none")  # no openid known yet
    assert await mirror_row(world, mall_id, plain_coupon) is None
    await wechat_payer(world, mall_id, member, f"o-{member[:8]}")
    await synced(world, mall_id, flagged_coupon, Wanted.SENT)
    assert len(await platform_coupons(world, f"o-{member[:8]}")) == 1


def delivery(subject: str, message: Any) -> Delivery:
    message.event_id = str(uuid.uuid4())
    message.occurred_at.FromDatetime(datetime.now(UTC))
    return Delivery(message.event_id, subject, message.SerializeToString())


async def test_a_batch_of_coupon_events_lands_as_the_events_one_by_one_would(
    world: World, unique_id: str
) -> None:
    """One batch, two statements: what each coupon of a mirrored stock should be, folded in
    stream order; coupons of other stocks ignored; a return applied between its neighbours."""
    mall_id = f"mall-{unique_id}"
    plain = await create_stock(world, mall_id)
    flagged = await create_stock(world, mall_id)
    await enable(world, mall_id, flagged)
    member = str(uuid.uuid4())

    def ev(kind: str, coupon_id: str, stock_id: str) -> Delivery:
        fields = {"mall_id": mall_id, "coupon_id": coupon_id, "stock_id": stock_id}
        message: Any = {
            "claimed": events_pb2.CouponClaimed,
            "redeemed": events_pb2.CouponRedeemed,
            "revoked": events_pb2.CouponRevoked,
            "returned": events_pb2.CouponReturned,
        }[kind]
        if kind != "returned":
            fields["member_id"] = member
        return delivery(f"coupons.coupon.{kind}", message(**fields))

    batch = [
        ev("claimed", "c-used", flagged),
        ev("claimed", "c-plain", plain),
        ev("claimed", "c-cycle", flagged),
        ev("redeemed", "c-used", flagged),
        ev("revoked", "c-used", flagged),  # used is final: stays used
        ev("claimed", "c-sent", flagged),
        ev("redeemed", "c-cycle", flagged),
        ev("returned", "c-cycle", flagged),  # usable again: a new cycle
        ev("revoked", "c-cycle", flagged),  # then revoked in it
        ev("redeemed", "c-plain", plain),
    ]
    async with world.pool.acquire() as conn, conn.transaction():
        await on_coupon_events(conn, batch)

    rows = {
        c: await mirror_row(world, mall_id, c) for c in ("c-used", "c-plain", "c-cycle", "c-sent")
    }
    assert rows["c-plain"] is None
    used, cycle, sent = rows["c-used"], rows["c-cycle"], rows["c-sent"]
    assert used is not None
    assert cycle is not None
    assert sent is not None
    assert (used["wanted"], used["cycle"]) == ("used", 0)
    assert used["use_time"] is not None
    assert used["coupon_code"] == coupon_code(mall_id, "c-used")
    assert (cycle["wanted"], cycle["cycle"], cycle["use_time"]) == ("deactivated", 1, None)
    assert (sent["wanted"], sent["member_id"]) == ("sent", member)
