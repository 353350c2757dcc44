"""The coupons gRPC API on real PostgreSQL and NATS (the directory mirrored from the DIRECTORY
key-value bucket, as member writes it): tenant stocks, claims, redemption (核销) with each of its
refusals, claim codes and a stock's figures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import nats
import pytest
from coupons.bootstrap import MIGRATIONS, bootstrap
from coupons.config import Settings
from coupons.domain.redemption import Use
from coupons.service_layer.redemptions import Redeemer
from kit.cli import serving
from kit.credentials import hash_secret
from kit.errors import AppError
from kit.grpc_errors import from_rpc_error
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.migrations import migrate
from kit.proto import timestamp, to_datetime
from mall.common.v1 import common_pb2
from mall.coupons.v1 import coupons_pb2 as cpb
from mall.coupons.v1 import coupons_service_pb2 as pb
from mall.coupons.v1 import coupons_service_pb2_grpc as pb_grpc
from mall.coupons.v1 import events_pb2
from mall.member.v1 import directory_pb2
from mall_testing.plugin import FreshDatabase

DENIED = grpc.StatusCode.PERMISSION_DENIED
FAILED = grpc.StatusCode.FAILED_PRECONDITION
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Api:
    url: str
    stub: pb_grpc.CouponsServiceAsyncStub
    mall_id: str
    #: Tenant A (coffee) owns store a1; tenant B (tea) owns b1; tenant C (cake) owns c1.
    a: Metadata
    b: Metadata


async def _publish_directory(nats_url: str, mall_id: str) -> tuple[Metadata, Metadata]:
    nc = await nats.connect(nats_url)
    try:
        kv = await open_bucket(nc.jetstream(), DIRECTORY_BUCKET)
        for tenant_id, store_id in (("coffee", "a1"), ("tea", "b1"), ("cake", "c1")):
            store = directory_pb2.Store(mall_id=mall_id, tenant_id=tenant_id, store_id=store_id)
            await kv.put(f"store.{mall_id}.{store_id}", store.SerializeToString())
        presented = []
        for tenant_id in ("coffee", "tea"):
            credential_id, secret = f"cred-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
            credential = directory_pb2.Credential(
                mall_id=mall_id,
                credential_id=credential_id,
                tenant_id=tenant_id,
                secret_hash=hash_secret(secret),
            )
            await kv.put(f"credential.{mall_id}.{credential_id}", credential.SerializeToString())
            presented.append((("x-mall-credential", f"{credential_id}.{secret}"),))
    finally:
        await nc.close()
    return presented[0], presented[1]


@pytest.fixture(scope="module")
async def api(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[Api]:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    mall_id = f"mall-{uuid.uuid4().hex[:12]}"
    a, b = await _publish_directory(nats_url, mall_id)
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    async with (
        bootstrap(settings) as roles,
        serving(roles) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.CouponsServiceStub(channel)
        for _ in range(200):  # until the mirror has replayed the bucket
            code, _ = await refused(
                stub.RedeemCoupon(
                    pb.RedeemCouponRequest(
                        mall_id=mall_id, coupon_id="0", store_id="a1", use_request_id="probe"
                    ),
                    metadata=a,
                )
            )
            if code is grpc.StatusCode.NOT_FOUND:
                break
            await asyncio.sleep(0.05)
        yield Api(url, stub, mall_id, a, b)


@pytest.fixture
async def db(api: Api) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(api.url)
    try:
        yield conn
    finally:
        await conn.close()


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    return caught.value.code(), error.code if error is not None else ""


def stock(mall_id: str, **fields: Any) -> cpb.Stock:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "mall_id": mall_id,
        "title": "满100减20",
        "coupon_type": cpb.COUPON_TYPE_FIXED_AMOUNT,
        "discount_fen": 2000,
        "threshold_fen": 10000,
        "max_coupons": 100,
        "claim_starts_at": timestamp(now - timedelta(hours=1)),
        "claim_ends_at": timestamp(now + timedelta(days=1)),
        "valid_days": 30,
    }
    return cpb.Stock(**(base | fields))


async def create(api: Api, who: Metadata | None, **fields: Any) -> cpb.Stock:
    answer = await api.stub.CreateStock(
        pb.CreateStockRequest(stock=stock(api.mall_id, **fields), request_id=str(uuid.uuid4())),
        metadata=who,
    )
    return answer.stock


async def claimed(api: Api, s: cpb.Stock, member_id: str | None = None) -> cpb.Coupon:
    answer = await api.stub.ClaimCoupon(
        pb.ClaimCouponRequest(
            mall_id=api.mall_id,
            stock_id=s.stock_id,
            member_id=member_id or str(uuid.uuid4()),
            request_id=str(uuid.uuid4()),
        )
    )
    return answer.coupon


def redeem(
    api: Api, coupon: cpb.Coupon, store_id: str, amount: int, use: str | None = None
) -> pb.RedeemCouponRequest:
    return pb.RedeemCouponRequest(
        mall_id=api.mall_id,
        coupon_id=coupon.coupon_id,
        store_id=store_id,
        use_request_id=use or str(uuid.uuid4()),
        order_amount_fen=amount,
    )


async def outbox(db: asyncpg.Connection, subject: str, mall_id: str) -> int:
    n: int = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE subject = $1 AND mall_id = $2", subject, mall_id
    )
    return n


async def test_a_tenant_creates_stocks_for_its_own_stores_only(api: Api) -> None:
    own = await create(api, api.a, store_ids=["a1"])
    assert own.tenant_id == "coffee"
    assert own.status == cpb.STOCK_STATUS_ACTIVE
    assert await refused(api.stub.CreateStock(
        pb.CreateStockRequest(stock=stock(api.mall_id, store_ids=["b1"]), request_id="x1"),
        metadata=api.a,
    )) == (DENIED, "store_not_yours")  # fmt: skip
    assert await refused(api.stub.CreateStock(
        pb.CreateStockRequest(stock=stock(api.mall_id, tenant_ids=["tea"]), request_id="x2"),
        metadata=api.a,
    )) == (DENIED, "cross_brand_needs_mall")  # fmt: skip
    mall_stock = await create(api, None, tenant_ids=["coffee", "tea"])  # ops: cross-brand
    assert mall_stock.tenant_id == ""
    assert list(mall_stock.tenant_ids) == ["coffee", "tea"]


async def test_stock_creation_is_idempotent_and_validated(api: Api) -> None:
    request = pb.CreateStockRequest(stock=stock(api.mall_id), request_id=str(uuid.uuid4()))
    first = await api.stub.CreateStock(request, metadata=api.a)
    again = await api.stub.CreateStock(request, metadata=api.a)
    assert again.stock.stock_id == first.stock.stock_id
    bad = [
        ({"discount_fen": 0}, "invalid_discount"),
        ({"coupon_type": cpb.COUPON_TYPE_PERCENT_OFF, "percent_off": 100}, "invalid_percent_off"),
        ({"max_coupons": 0}, "invalid_max_coupons"),
        ({"valid_days": 0}, "invalid_validity"),
        ({"coupon_type": cpb.COUPON_TYPE_PARKING, "parking_minutes": 0}, "invalid_parking_minutes"),
    ]
    for fields, code in bad:
        request = pb.CreateStockRequest(stock=stock(api.mall_id, **fields), request_id="r")
        assert await refused(api.stub.CreateStock(request, metadata=api.a)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            code,
        )


async def test_redemption_gives_the_discount_once_per_use_request(
    api: Api, db: asyncpg.Connection
) -> None:
    s = await create(api, api.a)
    coupon = await claimed(api, s)
    request = redeem(api, coupon, "a1", 12_000)

    first = await api.stub.RedeemCoupon(request, metadata=api.a)
    again = await api.stub.RedeemCoupon(request, metadata=api.a)

    assert first.discount_fen == again.discount_fen == 2000
    assert first.coupon.status == again.coupon.status == cpb.COUPON_STATUS_USED
    assert first.coupon.redeemed_store_id == "a1"
    redeemed = await db.fetchval(
        """SELECT count(*) FROM outbox WHERE subject = 'coupons.coupon.redeemed'
             AND mall_id = $1 AND payload LIKE '%' || $2::bytea || '%'""",
        api.mall_id,
        coupon.coupon_id.encode(),
    )
    assert redeemed == 1
    other_use = redeem(api, coupon, "a1", 12_000)
    assert await refused(api.stub.RedeemCoupon(other_use, metadata=api.a)) == (
        FAILED,
        "coupon_used",
    )


async def test_tenant_b_cannot_redeem_tenant_as_coupon_and_nothing_changes(
    api: Api, db: asyncpg.Connection
) -> None:
    s = await create(api, api.a)
    coupon = await claimed(api, s)
    before = await outbox(db, "coupons.coupon.redeemed", api.mall_id)

    at_own_store = await refused(
        api.stub.RedeemCoupon(redeem(api, coupon, "b1", 50_000), metadata=api.b)
    )
    at_as_store = await refused(
        api.stub.RedeemCoupon(redeem(api, coupon, "a1", 50_000), metadata=api.b)
    )

    assert at_own_store == (DENIED, "coupon_not_usable_here")
    assert at_as_store == (DENIED, "store_not_yours")
    row = await db.fetchrow(
        "SELECT status, use_request_id FROM coupons WHERE mall_id = $1 AND coupon_id = $2",
        api.mall_id,
        coupon.coupon_id,
    )
    assert row is not None
    assert (row["status"], row["use_request_id"]) == ("available", None)
    assert await outbox(db, "coupons.coupon.redeemed", api.mall_id) == before


async def test_each_refusal_has_its_own_reason(api: Api, db: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    s = await create(api, api.a, store_ids=["a1"])
    later = await create(
        api,
        api.a,
        valid_days=0,
        valid_from=timestamp(now + timedelta(days=1)),
        valid_until=timestamp(now + timedelta(days=2)),
    )
    below, expired, not_yet = (
        await claimed(api, s),
        await claimed(api, s),
        await claimed(api, later),
    )
    await db.execute(
        "UPDATE coupons SET valid_until = now() - interval '1 second' WHERE coupon_id = $1",
        expired.coupon_id,
    )
    cases = [
        (redeem(api, below, "a1", 9_999), (FAILED, "below_threshold")),
        (redeem(api, expired, "a1", 20_000), (FAILED, "coupon_expired")),
        (redeem(api, not_yet, "a1", 20_000), (FAILED, "coupon_not_yet_valid")),
        (redeem(api, below, "a1", -1), (grpc.StatusCode.INVALID_ARGUMENT, "invalid_order_amount")),
    ]
    for request, expected in cases:
        assert await refused(api.stub.RedeemCoupon(request, metadata=api.a)) == expected
    unknown = pb.RedeemCouponRequest(
        mall_id=api.mall_id, coupon_id="404", store_id="a1", use_request_id="u"
    )
    assert await refused(api.stub.RedeemCoupon(unknown, metadata=api.a)) == (
        grpc.StatusCode.NOT_FOUND,
        "coupon_not_found",
    )
    assert await refused(api.stub.RedeemCoupon(redeem(api, below, "a1", 1))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_credential",
    )
    assert await refused(
        api.stub.ClaimCoupon(
            pb.ClaimCouponRequest(mall_id=api.mall_id, stock_id=s.stock_id), metadata=api.a
        )
    ) == (DENIED, "rpc_not_for_tenants")


async def test_percent_off_with_a_cap_and_cross_brand_use(api: Api) -> None:
    s = await create(
        api,
        None,
        coupon_type=cpb.COUPON_TYPE_PERCENT_OFF,
        percent_off=20,
        max_discount_fen=3000,
        discount_fen=0,
        threshold_fen=0,
        tenant_ids=["coffee", "tea"],
    )
    small, large, elsewhere = await claimed(api, s), await claimed(api, s), await claimed(api, s)
    off_small = await api.stub.RedeemCoupon(redeem(api, small, "a1", 10_000), metadata=api.a)
    off_large = await api.stub.RedeemCoupon(redeem(api, large, "b1", 50_000), metadata=api.b)
    assert (off_small.discount_fen, off_large.discount_fen) == (2000, 3000)
    cake = await refused(
        api.stub.RedeemCoupon(redeem(api, elsewhere, "c1", 10_000), metadata=api.a)
    )
    assert cake == (DENIED, "store_not_yours")


async def test_claim_retry_batch_and_wallet(api: Api) -> None:
    s = await create(api, api.a, max_coupons=3, max_per_member=2)
    member_id = str(uuid.uuid4())
    request = pb.ClaimCouponRequest(
        mall_id=api.mall_id, stock_id=s.stock_id, member_id=member_id, request_id="press-1"
    )
    first = await api.stub.ClaimCoupon(request)
    again = await api.stub.ClaimCoupon(request)
    assert again.coupon == first.coupon

    batch = await api.stub.ClaimCoupons(
        pb.ClaimCouponsRequest(
            claims=[
                pb.ClaimCouponRequest(
                    mall_id=api.mall_id, stock_id=s.stock_id, member_id=m, request_id=r
                )
                for m, r in [
                    (member_id, "press-2"),
                    (member_id, "press-3"),
                    (str(uuid.uuid4()), "a"),
                    (str(uuid.uuid4()), "b"),
                ]
            ]
        )
    )
    assert [r.outcome for r in batch.results] == [
        pb.CLAIM_OUTCOME_CLAIMED,
        pb.CLAIM_OUTCOME_LIMIT_REACHED,
        pb.CLAIM_OUTCOME_CLAIMED,
        pb.CLAIM_OUTCOME_SOLD_OUT,
    ]
    assert await refused(api.stub.ClaimCoupon(
        pb.ClaimCouponRequest(
            mall_id=api.mall_id, stock_id=s.stock_id, member_id=member_id, request_id="press-4"
        )
    )) == (FAILED, "stock_sold_out")  # fmt: skip

    page1 = await api.stub.ListMemberCoupons(
        pb.ListMemberCouponsRequest(
            mall_id=api.mall_id, member_id=member_id, page=common_pb2.PageRequest(page_size=1)
        )
    )
    page2 = await api.stub.ListMemberCoupons(
        pb.ListMemberCouponsRequest(
            mall_id=api.mall_id,
            member_id=member_id,
            page=common_pb2.PageRequest(page_size=1, page_token=page1.page.next_page_token),
        )
    )
    assert len(page1.coupons) == len(page2.coupons) == 1
    assert page2.page.next_page_token == ""
    assert {page1.coupons[0].coupon_id, page2.coupons[0].coupon_id} == {
        first.coupon.coupon_id,
        batch.results[0].coupon.coupon_id,
    }


async def test_codes_record_channel_and_guide_in_the_figures(api: Api) -> None:
    s = await create(api, api.a)
    for code, channel, guide in (
        ("CARD-1", cpb.CLAIM_CHANNEL_PACKAGE_CARD, ""),
        ("GUIDE-7", cpb.CLAIM_CHANNEL_GUIDE, "guide-7"),
    ):
        await api.stub.CreateClaimCode(
            pb.CreateClaimCodeRequest(
                claim_code=cpb.ClaimCode(
                    mall_id=api.mall_id,
                    code=f"{code}-{s.stock_id}",
                    stock_id=s.stock_id,
                    channel=channel,
                    guide_id=guide,
                )
            ),
            metadata=api.a,
        )
    by_guide = []
    for _ in range(2):
        answer = await api.stub.ClaimCouponByCode(
            pb.ClaimCouponByCodeRequest(
                mall_id=api.mall_id,
                code=f"GUIDE-7-{s.stock_id}",
                member_id=str(uuid.uuid4()),
                request_id="r",
            )
        )
        by_guide.append(answer.coupon)
    by_card = await api.stub.ClaimCouponByCode(
        pb.ClaimCouponByCodeRequest(
            mall_id=api.mall_id,
            code=f"CARD-1-{s.stock_id}",
            member_id=str(uuid.uuid4()),
            request_id="r",
        )
    )
    await claimed(api, s)
    assert by_guide[0].guide_id == "guide-7"
    assert by_guide[0].channel == cpb.CLAIM_CHANNEL_GUIDE
    assert by_card.coupon.channel == cpb.CLAIM_CHANNEL_PACKAGE_CARD
    await api.stub.RedeemCoupon(redeem(api, by_guide[0], "a1", 20_000), metadata=api.a)

    figures = await api.stub.GetStockStats(
        pb.GetStockStatsRequest(mall_id=api.mall_id, stock_id=s.stock_id), metadata=api.a
    )

    assert (figures.claimed, figures.redeemed, figures.redemption_rate_bp) == (4, 1, 2500)
    rows = {(f.channel, f.guide_id): (f.claimed, f.redeemed) for f in figures.by_channel}
    assert rows == {
        (cpb.CLAIM_CHANNEL_MINI_PROGRAM, ""): (1, 0),
        (cpb.CLAIM_CHANNEL_PACKAGE_CARD, ""): (1, 0),
        (cpb.CLAIM_CHANNEL_GUIDE, "guide-7"): (2, 1),
    }
    assert await refused(api.stub.GetStockStats(
        pb.GetStockStatsRequest(mall_id=api.mall_id, stock_id=s.stock_id), metadata=api.b
    )) == (grpc.StatusCode.NOT_FOUND, "stock_not_found")  # fmt: skip


async def test_concurrent_uses_of_one_coupon_redeem_it_once(
    api: Api, db: asyncpg.Connection
) -> None:
    s = await create(api, api.a)
    coupon = await claimed(api, s)
    same = redeem(api, coupon, "a1", 20_000, use="lane-1")
    others = [redeem(api, coupon, "a1", 20_000) for _ in range(5)]

    async def attempt(request: pb.RedeemCouponRequest) -> str:
        try:
            await api.stub.RedeemCoupon(request, metadata=api.a)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            return error.code if error is not None else str(exc.code())
        return request.use_request_id

    answers = await asyncio.gather(*(attempt(r) for r in [same, same, same, *others]))

    winners = {a for a in answers if a != "coupon_used"}
    assert len(winners) == 1
    row = await db.fetchrow(
        "SELECT use_request_id FROM coupons WHERE mall_id = $1 AND coupon_id = $2",
        api.mall_id,
        coupon.coupon_id,
    )
    assert row is not None
    assert winners == {row["use_request_id"]}
    if winners == {"lane-1"}:
        assert answers[:3] == ["lane-1"] * 3


async def test_the_redeemer_answers_concurrent_callers_in_batches(api: Api) -> None:
    s = await create(api, api.a)
    coupons = [await claimed(api, s) for _ in range(40)]
    async with asyncpg.create_pool(api.url, min_size=1, max_size=4) as pool:
        redeemer = Redeemer(pool, max_batch=16, workers=2)
        calls = [
            Use(api.mall_id, c.coupon_id, "a1", "coffee", f"lane-{i}", 10_000 + i)
            for i, c in enumerate(coupons)
        ]
        calls.append(replace(calls[0], use_request_id="lane-other"))  # the same coupon again
        answers = await asyncio.gather(*(redeemer.redeem(u) for u in calls), return_exceptions=True)
    used = [a for a in answers if isinstance(a, tuple)]
    refused = [a for a in answers if isinstance(a, AppError)]
    assert len(used) == 40
    assert [r.code for r in refused] == ["coupon_used"]
    assert {coupon.coupon_id for coupon, _ in used} == {c.coupon_id for c in coupons}
    assert all(off == 2000 for _, off in used)


async def test_parking_coupons_announce_their_kind_and_minutes(
    api: Api, db: asyncpg.Connection
) -> None:
    s = await create(
        api,
        None,
        coupon_type=cpb.COUPON_TYPE_PARKING,
        parking_minutes=120,
        discount_fen=0,
        threshold_fen=0,
        title="停车2小时",
    )
    coupon = await claimed(api, s)
    payloads = await db.fetch(
        "SELECT payload FROM outbox WHERE mall_id = $1 AND subject = 'coupons.coupon.claimed'",
        api.mall_id,
    )
    (event,) = [
        e
        for e in (events_pb2.CouponClaimed.FromString(p["payload"]) for p in payloads)
        if e.coupon_id == coupon.coupon_id
    ]
    assert (event.coupon_type, event.parking_minutes) == (cpb.COUPON_TYPE_PARKING, 120)
    assert event.channel == cpb.CLAIM_CHANNEL_MINI_PROGRAM
    assert event.valid_until == coupon.valid_until


async def test_rules_belong_to_their_tenant_and_stocks_list_by_state(api: Api) -> None:
    s = await create(api, api.a)
    rule = cpb.PostPaymentRule(
        mall_id=api.mall_id,
        rule_id=f"rule-{s.stock_id}",
        stock_id=s.stock_id,
        min_amount_fen=5000,
        enabled=True,
    )
    first = await api.stub.PutPostPaymentRule(
        pb.PutPostPaymentRuleRequest(rule=rule), metadata=api.a
    )
    again = await api.stub.PutPostPaymentRule(
        pb.PutPostPaymentRuleRequest(rule=rule), metadata=api.a
    )
    assert (first.rule.version, again.rule.version) == (1, 2)
    assert await refused(
        api.stub.PutPostPaymentRule(pb.PutPostPaymentRuleRequest(rule=rule), metadata=api.b)
    ) == (grpc.StatusCode.NOT_FOUND, "stock_not_found")

    empty = await create(api, api.a, max_coupons=1, title="仅一张")
    await claimed(api, empty)
    listed = await api.stub.ListStocks(
        pb.ListStocksRequest(
            mall_id=api.mall_id, tenant_id="coffee", status=cpb.STOCK_STATUS_EXHAUSTED
        )
    )
    exhausted = {x.stock_id: x for x in listed.stocks}  # other tests' stocks share the mall
    assert empty.stock_id in exhausted
    assert s.stock_id not in exhausted
    assert exhausted[empty.stock_id].claimed_count == 1
    assert {x.status for x in listed.stocks} == {cpb.STOCK_STATUS_EXHAUSTED}
    fetched = await api.stub.GetStock(pb.GetStockRequest(mall_id=api.mall_id, stock_id=s.stock_id))
    assert fetched.stock.status == cpb.STOCK_STATUS_ACTIVE


async def test_200_concurrent_claim_calls_for_50_coupons_over_grpc(
    api: Api, db: asyncpg.Connection
) -> None:
    s = await create(api, api.a, max_coupons=50, max_per_member=1)
    shoppers = [str(uuid.uuid4()) for _ in range(150)]
    presses = shoppers + shoppers[:50]  # 50 shoppers press twice

    async def press(member_id: str) -> str:
        try:
            await claimed(api, s, member_id)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            return error.code if error is not None else str(exc.code())
        return "claimed"

    answers = await asyncio.gather(*(press(m) for m in presses))

    assert answers.count("claimed") == 50
    assert set(answers) <= {"claimed", "stock_sold_out", "member_limit_reached"}
    row = await db.fetchrow(
        """SELECT count(*) AS n, count(DISTINCT member_id) AS members FROM coupons
            WHERE mall_id = $1 AND stock_id = $2""",
        api.mall_id,
        s.stock_id,
    )
    assert row is not None
    assert (row["n"], row["members"]) == (50, 50)


async def test_wallet_summary_counts_coupons_still_to_use(api: Api) -> None:
    s = await create(api, api.a, valid_days=3)
    later = await create(api, api.a, valid_days=10)
    member_id = str(uuid.uuid4())
    soon, used, far = (
        await claimed(api, s, member_id),
        await claimed(api, s, member_id),
        await claimed(api, later, member_id),
    )
    await api.stub.RedeemCoupon(redeem(api, used, "a1", 20_000), metadata=api.a)

    summary = await api.stub.GetWalletSummary(
        pb.GetWalletSummaryRequest(mall_id=api.mall_id, member_id=member_id)
    )
    nobody = await api.stub.GetWalletSummary(
        pb.GetWalletSummaryRequest(mall_id=api.mall_id, member_id=str(uuid.uuid4()))
    )

    assert summary.available == 2
    assert summary.next_expiry == soon.valid_until
    assert to_datetime(far.valid_until) > to_datetime(soon.valid_until)  # soon is the next
    assert nobody.available == 0
    assert not nobody.HasField("next_expiry")


# -- RedeemCoupons: a till's stream ------------------------------------------------------------


def outcome(answer: pb.RedeemCouponsResponse) -> tuple[str, int, str]:
    """(use_request_id, code, reason) of one streamed answer; code 0 when redeemed."""
    if answer.WhichOneof("outcome") == "redeemed":
        return answer.use_request_id, 0, ""
    return answer.use_request_id, answer.refused.code, answer.refused.reason


async def streamed(
    api: Api, requests: list[pb.RedeemCouponRequest], who: Metadata
) -> list[pb.RedeemCouponsResponse]:
    """Every request on one stream, written without waiting; the answers as they came."""
    call = api.stub.RedeemCoupons(iter(requests), metadata=who)
    return [answer async for answer in call]


def open_till(api: Api, who: Metadata) -> Any:
    """A stream the test writes to as it goes (grpc.aio takes no request iterator for that;
    its type stubs want one)."""
    return api.stub.RedeemCoupons(metadata=who)  # type: ignore[call-arg]


async def answer_of(call: Any) -> pb.RedeemCouponsResponse:
    answer = await call.read()
    assert isinstance(answer, pb.RedeemCouponsResponse), answer
    return answer


async def test_a_till_stream_answers_each_redemption_in_order_as_the_unary_call_would(
    api: Api, db: asyncpg.Connection
) -> None:
    s = await create(api, api.a, store_ids=["a1"])
    good, below, expired = [await claimed(api, s) for _ in range(3)]
    await db.execute(
        "UPDATE coupons SET valid_until = now() - interval '1 second' WHERE coupon_id = $1",
        expired.coupon_id,
    )
    first = redeem(api, good, "a1", 12_000, use="till-1")
    requests = [
        first,
        first,  # the till retried: the same answer
        redeem(api, good, "a1", 12_000, use="till-2"),
        redeem(api, below, "a1", 9_999, use="till-3"),
        redeem(api, below, "b1", 20_000, use="till-4"),
        redeem(api, expired, "a1", 20_000, use="till-5"),
        pb.RedeemCouponRequest(
            mall_id=api.mall_id, coupon_id="404", store_id="a1", use_request_id="till-6"
        ),
        redeem(api, below, "a1", -1, use="till-7"),
    ]

    answers = await streamed(api, requests, api.a)

    assert [outcome(a) for a in answers] == [
        ("till-1", 0, ""),
        ("till-1", 0, ""),
        ("till-2", FAILED.value[0], "coupon_used"),
        ("till-3", FAILED.value[0], "below_threshold"),
        ("till-4", DENIED.value[0], "store_not_yours"),
        ("till-5", FAILED.value[0], "coupon_expired"),
        ("till-6", grpc.StatusCode.NOT_FOUND.value[0], "coupon_not_found"),
        ("till-7", grpc.StatusCode.INVALID_ARGUMENT.value[0], "invalid_order_amount"),
    ]
    assert answers[0].redeemed == answers[1].redeemed
    assert answers[0].redeemed.discount_fen == 2000
    assert answers[0].redeemed.coupon.status == cpb.COUPON_STATUS_USED
    assert answers[3].refused.message  # for people: what the threshold is
    # The unary call sees what the stream did: the retry answers the same, the rest unchanged.
    unary = await api.stub.RedeemCoupon(first, metadata=api.a)
    assert unary == answers[0].redeemed
    rows = await db.fetch(
        "SELECT coupon_id, status, use_request_id FROM coupons WHERE coupon_id = ANY($1)",
        [good.coupon_id, below.coupon_id, expired.coupon_id],
    )
    assert {r["coupon_id"]: (r["status"], r["use_request_id"]) for r in rows} == {
        good.coupon_id: ("used", "till-1"),
        below.coupon_id: ("available", None),
        expired.coupon_id: ("available", None),
    }
    redeemed = await db.fetchval(
        """SELECT count(*) FROM outbox WHERE subject = 'coupons.coupon.redeemed'
             AND mall_id = $1 AND payload LIKE '%' || $2::bytea || '%'""",
        api.mall_id,
        good.coupon_id.encode(),
    )
    assert redeemed == 1


async def test_tenant_b_stream_cannot_redeem_tenant_as_coupon_and_nothing_changes(
    api: Api, db: asyncpg.Connection
) -> None:
    s = await create(api, api.a)
    coupon = await claimed(api, s)
    before = await outbox(db, "coupons.coupon.redeemed", api.mall_id)

    answers = await streamed(
        api,
        [redeem(api, coupon, "b1", 50_000, use="b-1"), redeem(api, coupon, "a1", 50_000, "b-2")],
        api.b,
    )

    assert [outcome(a) for a in answers] == [
        ("b-1", DENIED.value[0], "coupon_not_usable_here"),
        ("b-2", DENIED.value[0], "store_not_yours"),
    ]
    status = await db.fetchval(
        "SELECT status FROM coupons WHERE mall_id = $1 AND coupon_id = $2",
        api.mall_id,
        coupon.coupon_id,
    )
    assert status == "available"
    assert await outbox(db, "coupons.coupon.redeemed", api.mall_id) == before


async def test_a_stream_without_a_tenant_credential_is_refused_before_anything_is_read(
    api: Api,
) -> None:
    s = await create(api, api.a)
    coupon = await claimed(api, s)
    call = api.stub.RedeemCoupons(iter([redeem(api, coupon, "a1", 20_000)]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    error = from_rpc_error(caught.value)
    assert (caught.value.code(), error.code if error else "") == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_credential",
    )
    claimed_again = await api.stub.RedeemCoupon(redeem(api, coupon, "a1", 20_000), metadata=api.a)
    assert claimed_again.discount_fen == 2000  # the refused stream used nothing


async def test_revoking_the_credential_ends_its_open_stream(
    api: Api, nats_url: str, db: asyncpg.Connection
) -> None:
    s = await create(api, api.a)
    coupons = [await claimed(api, s) for _ in range(3)]
    credential_id, secret = f"cred-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    credential = directory_pb2.Credential(
        mall_id=api.mall_id,
        credential_id=credential_id,
        tenant_id="coffee",
        secret_hash=hash_secret(secret),
    )
    nc = await nats.connect(nats_url)
    try:
        kv = await open_bucket(nc.jetstream(), DIRECTORY_BUCKET)
        key = f"credential.{api.mall_id}.{credential_id}"
        await kv.put(key, credential.SerializeToString())
        till = (("x-mall-credential", f"{credential_id}.{secret}"),)
        call = open_till(api, till)
        for _ in range(200):  # until the mirror has the new credential
            await call.write(redeem(api, coupons[0], "a1", 20_000, use="rv-0"))
            try:
                first = await answer_of(call)
                break
            except grpc.aio.AioRpcError:
                call = open_till(api, till)
                await asyncio.sleep(0.05)
        assert outcome(first) == ("rv-0", 0, "")

        credential.revoked_at.CopyFrom(timestamp(datetime.now(UTC)))
        await kv.put(key, credential.SerializeToString())

        async def until_refused() -> None:
            for i in range(400):  # until the mirror sees the revocation
                await call.write(redeem(api, coupons[1], "a1", 20_000, use=f"rv-{i + 1}"))
                answer = await answer_of(call)
                assert outcome(answer)[1:] in ((0, ""), (FAILED.value[0], "coupon_used"))
                await asyncio.sleep(0.02)

        code, reason = await refused(until_refused())
    finally:
        await nc.close()
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_credential")
    status = await db.fetchval(
        "SELECT status FROM coupons WHERE coupon_id = $1", coupons[2].coupon_id
    )
    assert status == "available"


async def test_a_stream_with_many_in_flight_and_racing_streams_redeem_each_coupon_once(
    api: Api, db: asyncpg.Connection
) -> None:
    s = await create(api, api.a, max_coupons=200)
    coupons = [await claimed(api, s) for _ in range(150)]
    many = [redeem(api, c, "a1", 10_000 + i, use=f"bulk-{i}") for i, c in enumerate(coupons)]
    contested = await claimed(api, s)
    racers = [[redeem(api, contested, "a1", 20_000, use=f"lane-{n}")] for n in range(12)]

    bulk, *raced = await asyncio.gather(
        streamed(api, many, api.a), *(streamed(api, r, api.a) for r in racers)
    )

    # More than the server keeps in flight per stream (STREAM_IN_FLIGHT): all answered, in order.
    assert [outcome(a) for a in bulk] == [(f"bulk-{i}", 0, "") for i in range(150)]
    assert {a.redeemed.coupon.coupon_id for a in bulk} == {c.coupon_id for c in coupons}
    results = [outcome(answers[0]) for answers in raced]
    winners = [r for r in results if r[1] == 0]
    assert len(winners) == 1
    assert sorted(r[2] for r in results if r[1] != 0) == ["coupon_used"] * 11
    used_by = await db.fetchval(
        "SELECT use_request_id FROM coupons WHERE coupon_id = $1", contested.coupon_id
    )
    assert used_by == winners[0][0]


async def test_a_till_that_drops_its_stream_resends_on_a_new_one_and_each_is_redeemed_once(
    api: Api, db: asyncpg.Connection
) -> None:
    s = await create(api, api.a, max_coupons=100)
    coupons = [await claimed(api, s) for _ in range(30)]
    uses = [redeem(api, c, "a1", 20_000, use=f"drop-{i}") for i, c in enumerate(coupons)]
    dropped = open_till(api, api.a)
    for use in uses:
        await dropped.write(use)
    seen = [await answer_of(dropped) for _ in range(5)]
    dropped.cancel()  # the till lost its connection with answers unread

    again = await streamed(api, uses, api.a)

    assert [outcome(a) for a in seen] == [(f"drop-{i}", 0, "") for i in range(5)]
    assert [outcome(a) for a in again] == [(f"drop-{i}", 0, "") for i in range(30)]
    assert [a.redeemed for a in again[:5]] == [a.redeemed for a in seen]
    rows = await db.fetch(
        "SELECT coupon_id, use_request_id FROM coupons WHERE coupon_id = ANY($1)",
        [c.coupon_id for c in coupons],
    )
    assert {r["coupon_id"]: r["use_request_id"] for r in rows} == {
        c.coupon_id: f"drop-{i}" for i, c in enumerate(coupons)
    }
    events = await db.fetchval(
        """SELECT count(*) FROM outbox WHERE subject = 'coupons.coupon.redeemed'
             AND mall_id = $1 AND payload LIKE ANY($2::bytea[])""",
        api.mall_id,
        [f"%{c.coupon_id}%".encode() for c in coupons],
    )
    assert events == 30


async def test_a_stream_ends_at_the_connection_age_and_the_till_resends_on_a_new_one(
    fresh_database: FreshDatabase, nats_url: str
) -> None:
    url = await fresh_database("coupons_stream_age")
    await migrate(url, MIGRATIONS)
    mall_id = f"mall-{uuid.uuid4().hex[:12]}"
    a, _ = await _publish_directory(nats_url, mall_id)
    settings = Settings(
        database_url=url,
        nats_url=nats_url,
        grpc_port=0,
        log_level="warning",
        grpc_max_connection_age_s=1.0,  # then GOAWAY, and the stream's grace (the deadline)
        grpc_default_deadline_s=1.0,
    )
    async with (
        bootstrap(settings) as roles,
        serving(roles) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        api = Api(url, pb_grpc.CouponsServiceStub(channel), mall_id, a, a)
        s = await create(api, None, store_ids=["a1"])
        first, second = await claimed(api, s), await claimed(api, s)
        till = open_till(api, a)
        for _ in range(200):  # until the mirror has the credential
            await till.write(redeem(api, first, "a1", 20_000, use="age-1"))
            try:
                answered = await answer_of(till)
                break
            except grpc.aio.AioRpcError:
                till = open_till(api, a)
                await asyncio.sleep(0.05)
        assert outcome(answered) == ("age-1", 0, "")

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(till.read(), timeout=15)  # a quiet till, past age and grace
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE

        again = await streamed(
            api,
            [
                redeem(api, first, "a1", 20_000, use="age-1"),
                redeem(api, second, "a1", 20_000, use="age-2"),
            ],
            a,
        )
        assert [outcome(x) for x in again] == [("age-1", 0, ""), ("age-2", 0, "")]
        assert again[0].redeemed == answered.redeemed
