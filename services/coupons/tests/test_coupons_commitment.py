"""Commitment cards (支付分先享卡) on the real coupons service: real PostgreSQL, real NATS
JetStream (payments arrive as member's events, the directory through member's DIRECTORY
bucket), the WeChat Pay simulator collecting clawbacks through pay-score.

The real case: 3 purchases in 15 days, 1.5 yuan off each purchase of 4 yuan or more. One card
is fulfilled on its 3rd purchase; another is clawed back at its deadline, the simulator seeing
a pay-score deduction of exactly the discounts it gave.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import nats
import pytest
from coupons.adapters import commitment_clawbacks as clawbacks
from coupons.adapters.commitment_payscore import WeChatPayScore
from coupons.bootstrap import MIGRATIONS, bootstrap
from coupons.commitment_settings import CommitmentSettings
from coupons.config import Settings
from coupons.domain.commitment import Card, CardStatus, OfferTerms, count_purchase, reminder_due
from coupons.entrypoints.commitment_jobs import commitment_commands
from coupons.service_layer.commitment import DEFAULT_SETTLE_GRACE as GRACE
from coupons.service_layer.commitment import sweep
from coupons.service_layer.commitment_clawbacks import ClawbackPolicy, ClawbackWorker
from hypothesis import given
from hypothesis import strategies as st
from kit.cli import running, serving
from kit.credentials import hash_secret
from kit.errors import InvalidInput
from kit.grpc_errors import from_rpc_error
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from kit.migrations import migrate
from kit.proto import timestamp, to_datetime
from mall.coupons.v1 import commitments_service_pb2 as pb
from mall.coupons.v1 import commitments_service_pb2_grpc as pb_grpc
from mall.coupons.v1 import events_pb2
from mall.member.v1 import directory_pb2
from mall.member.v1 import events_pb2 as member_events
from mall_testing.plugin import FreshDatabase
from nats.js.client import JetStreamContext
from wechatpay import signing
from wechatpay.client import WeChatPayClient
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import Merchant
from wechatpay_simulator.config import Settings as SimulatorSettings

MCHID = "1900009901"
APPID = "wx0commitmentcard1"
FAST = ClawbackPolicy(
    batch_size=10, lease_s=5, send_timeout_s=3, retry_base_s=0.01, retry_max_s=0.05,
    poll_interval_s=0.05,
)  # fmt: skip

# -- the rules, without I/O ------------------------------------------------------------------

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
TERMS = OfferTerms("15天3次，每次立减1.5元", ("s1",), 3, 15, 400, 150)


def card(**over: Any) -> Card:
    base: dict[str, Any] = {
        "card_id": str(uuid.uuid4()),
        "store_ids": ("s1",),
        "purchases_required": 3,
        "min_amount_fen": 400,
        "discount_fen": 150,
        "accepted_at": T0,
        "deadline": TERMS.deadline(T0),
        "status": CardStatus.ACTIVE,
        "purchases_made": 0,
        "discount_given_fen": 0,
    }
    return Card(**(base | over))


def test_the_discount_applies_at_the_cards_stores_from_the_minimum_within_the_window() -> None:
    c = card()
    assert c.deadline == T0 + timedelta(days=15)
    assert c.discount_for("s1", 400, T0) == 150
    assert c.discount_for("s1", 399, T0) == 0
    assert c.discount_for("s2", 1000, T0) == 0
    assert c.discount_for("s1", 1000, c.deadline) == 0
    assert card(purchases_made=3).discount_for("s1", 1000, T0) == 0
    assert card(status=CardStatus.FAILED).discount_for("s1", 1000, T0) == 0


def test_a_payment_counts_by_its_amount_before_the_discount() -> None:
    c = card()
    assert c.counts("s1", 250, 150, T0)  # a 4-yuan order paid 2.5 after 1.5 off
    assert not c.counts("s1", 250, 0, T0)  # 2.5 paid with no discount: under the minimum
    assert not c.counts("s1", 400, 0, T0 + timedelta(days=15))


@given(
    required=st.integers(1, 10),
    discounts=st.lists(st.sampled_from([0, 150]), min_size=1, max_size=10),
)
def test_progress_adds_up_and_fulfils_at_the_last_purchase(
    required: int, discounts: list[int]
) -> None:
    c = card(purchases_required=required)
    for i, discount in enumerate(discounts[:required], start=1):
        p = count_purchase(c, discount)
        assert p.purchases_made == i
        assert p.fulfilled == (i == required)
        c = card(
            card_id=c.card_id,
            purchases_required=required,
            purchases_made=p.purchases_made,
            discount_given_fen=p.discount_given_fen,
        )
    assert c.discount_given_fen == sum(discounts[:required])


def test_offer_terms_are_checked() -> None:
    with pytest.raises(InvalidInput):
        OfferTerms("x", ("s1",), 3, 15, 150, 150)  # an order would be free
    with pytest.raises(InvalidInput):
        OfferTerms("x", (), 3, 15, 400, 150)
    with pytest.raises(InvalidInput):
        OfferTerms("x", ("s1", "s1"), 3, 15, 400, 150)
    with pytest.raises(InvalidInput):
        OfferTerms("x", ("s1",), 0, 15, 400, 150)


def test_the_reminder_is_due_in_the_last_days_only() -> None:
    c = card()
    assert not reminder_due(c, T0)
    assert reminder_due(c, c.deadline - timedelta(days=1))
    assert not reminder_due(c, c.deadline)


# -- the service -----------------------------------------------------------------------------


@dataclass
class World:
    url: str
    api: pb_grpc.CommitmentServiceAsyncStub
    js: JetStreamContext
    sim: Running
    platform: WeChatPayClient
    merchant_key: signing.PrivateKey


@pytest.fixture(scope="module")
async def world(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[World]:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    merchant_key = signing.generate_private_key()
    sim_settings = SimulatorSettings.create([Merchant(MCHID, public_key=merchant_key.public_key())])
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    commitments = CommitmentSettings(commitment_sweep_interval_s=3600, wechatpay_api_base="")
    nc = await nats.connect(nats_url)
    async with (
        serve(sim_settings) as sim,
        bootstrap(settings, commitments) as roles,
        serving(roles, ("serve", "consume")) as target,
        grpc.aio.insecure_channel(target) as channel,
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
                pb_grpc.CommitmentServiceStub(channel),
                nc.jetstream(),
                sim,
                platform,
                merchant_key,
            )
    await nc.close()


@dataclass(frozen=True)
class Mall:
    mall_id: str
    store_id: str
    other_store_id: str
    credential: str


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10.0
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def fetchval(world: World, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(world.url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


@pytest.fixture
async def mall(world: World, unique_id: str) -> Mall:
    """A mall whose directory (a tenant with a store and a credential, another tenant's store)
    reaches coupons the way it does in production: member's DIRECTORY bucket."""
    mall_id, tenant = f"mall-{unique_id}", f"tea-{unique_id}"
    secret, credential_id = uuid.uuid4().hex, f"cred-{unique_id}"
    kv = await open_bucket(world.js, DIRECTORY_BUCKET)
    for store_id, owner in (("s1", tenant), ("s9", "someone-else")):
        store = directory_pb2.Store(mall_id=mall_id, tenant_id=owner, store_id=store_id)
        await kv.put(f"store.{mall_id}.{store_id}", store.SerializeToString())
    credential = directory_pb2.Credential(
        mall_id=mall_id,
        credential_id=credential_id,
        tenant_id=tenant,
        secret_hash=await asyncio.to_thread(hash_secret, secret),
    )
    await kv.put(f"credential.{mall_id}.{credential_id}", credential.SerializeToString())
    created = Mall(mall_id, "s1", "s9", f"{credential_id}.{secret}")

    async def arrived() -> bool:
        """The copy follows the bucket in order: once the credential is in, so are the stores."""
        probe = pb.ApplyCommitmentDiscountRequest(
            mall_id=mall_id,
            member_id=str(uuid.uuid4()),
            store_id="s1",
            order_amount_fen=400,
            request_id=str(uuid.uuid4()),
        )
        try:
            await world.api.ApplyCommitmentDiscount(
                probe, metadata=(("x-mall-credential", created.credential),)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            return False
        return True

    await eventually(arrived, "the directory entries")
    return created


def tenant(mall: Mall) -> tuple[tuple[str, str], ...]:
    return (("x-mall-credential", mall.credential),)


async def offer(world: World, mall: Mall) -> pb.CommitmentOffer:
    reply = await world.api.CreateCommitmentOffer(
        pb.CreateCommitmentOfferRequest(
            offer=pb.CommitmentOffer(
                mall_id=mall.mall_id,
                title="15天内消费3次，每次满4元立减1.5元",
                store_ids=[mall.store_id],
                purchases_required=3,
                window_days=15,
                min_amount_fen=400,
                discount_fen=150,
            ),
            request_id=str(uuid.uuid4()),
        ),
        metadata=tenant(mall),
    )
    return reply.offer


async def accept(world: World, mall: Mall, offer_id: str) -> tuple[str, pb.CommitmentCard]:
    member_id = str(uuid.uuid4())
    reply = await world.api.AcceptCommitmentCard(
        pb.AcceptCommitmentCardRequest(
            mall_id=mall.mall_id,
            offer_id=offer_id,
            member_id=member_id,
            appid=APPID,
            openid=f"o-{member_id[:12]}",
        )
    )
    return member_id, reply.card


async def checkout(world: World, mall: Mall, member_id: str, order_fen: int) -> int:
    """The POS asks for the discount, then the shopper pays the rest (member attributes it)."""
    reply = await world.api.ApplyCommitmentDiscount(
        pb.ApplyCommitmentDiscountRequest(
            mall_id=mall.mall_id,
            member_id=member_id,
            store_id=mall.store_id,
            order_amount_fen=order_fen,
            request_id=str(uuid.uuid4()),
        ),
        metadata=tenant(mall),
    )
    await pay(world, mall, member_id, order_fen - reply.discount_fen)
    return reply.discount_fen


async def pay(
    world: World,
    mall: Mall,
    member_id: str,
    amount_fen: int,
    transaction_id: str | None = None,
    paid_at: datetime | None = None,
) -> str:
    transaction_id = transaction_id or f"4200{uuid.uuid4().hex[:24]}"
    message = member_events.PaymentAttributed(
        event_id=str(uuid.uuid4()),
        mall_id=mall.mall_id,
        member_id=member_id,
        tenant_id="tea",
        store_id=mall.store_id,
        amount_fen=amount_fen,
        transaction_id=transaction_id,
        paid_at=timestamp(paid_at or datetime.now(UTC)),
    )
    await world.js.publish(
        "member.payment.attributed",
        message.SerializeToString(),
        headers={"Nats-Msg-Id": message.event_id},
    )
    return transaction_id


async def get_card(world: World, mall: Mall, card_id: str) -> pb.CommitmentCard:
    reply = await world.api.GetCommitmentCard(
        pb.GetCommitmentCardRequest(mall_id=mall.mall_id, card_id=card_id)
    )
    return reply.card


async def counted(world: World, mall: Mall, card_id: str, purchases: int) -> pb.CommitmentCard:
    async def done() -> bool:
        return (await get_card(world, mall, card_id)).purchases_made >= purchases

    await eventually(done, f"{purchases} purchases counted")
    return await get_card(world, mall, card_id)


async def outbox(world: World, mall_id: str, subject: str) -> list[bytes]:
    conn = await asyncpg.connect(world.url)
    try:
        rows = await conn.fetch(
            "SELECT payload FROM outbox WHERE mall_id = $1 AND subject = $2 ORDER BY seq",
            mall_id,
            subject,
        )
    finally:
        await conn.close()
    return [r["payload"] for r in rows]


async def test_three_buys_in_15_days_one_card_fulfilled_another_clawed_back(
    world: World, mall: Mall
) -> None:
    o = await offer(world, mall)
    keeper, keeper_card = await accept(world, mall, o.offer_id)
    quitter, quitter_card = await accept(world, mall, o.offer_id)
    assert to_datetime(keeper_card.deadline) - to_datetime(keeper_card.accepted_at) == timedelta(
        days=15
    )

    # The keeper buys three times, 4 yuan or more each: 1.5 yuan off each, fulfilled on the 3rd.
    for i, order in enumerate((400, 680, 1200), start=1):
        assert await checkout(world, mall, keeper, order) == 150
        seen = await counted(world, mall, keeper_card.card_id, i)
    assert seen.status == pb.COMMITMENT_CARD_STATUS_FULFILLED
    assert (seen.purchases_made, seen.discount_given_fen) == (3, 450)
    fulfilled = [
        events_pb2.CommitmentFulfilled.FromString(p)
        for p in await outbox(world, mall.mall_id, "coupons.commitment.fulfilled")
    ]
    assert [(f.card_id, f.discount_given_fen) for f in fulfilled] == [(keeper_card.card_id, 450)]
    progress = [
        events_pb2.CommitmentProgressed.FromString(p)
        for p in await outbox(world, mall.mall_id, "coupons.commitment.progressed")
    ]
    assert [p.purchases_made for p in progress] == [1, 2, 3]
    # A fulfilled card gives no more discount.
    assert await checkout(world, mall, keeper, 1000) == 0

    # The quitter buys once with the discount, once under the minimum, then never again.
    assert await checkout(world, mall, quitter, 450) == 150
    await counted(world, mall, quitter_card.card_id, 1)
    assert await checkout(world, mall, quitter, 399) == 0
    await pay(world, mall, quitter, 500)  # a marker payment that counts, with no discount
    quitting = await counted(world, mall, quitter_card.card_id, 2)
    assert (quitting.purchases_made, quitting.discount_given_fen) == (2, 150)

    # The deadline passes: the sweep fails the card and queues the clawback of 1.5 yuan.
    conn = await asyncpg.connect(world.url)
    try:
        done = await sweep(conn, to_datetime(quitter_card.deadline) + GRACE)
    finally:
        await conn.close()
    assert done is not None
    assert done[0] >= 1
    failed_card = await get_card(world, mall, quitter_card.card_id)
    assert failed_card.status == pb.COMMITMENT_CARD_STATUS_FAILED
    assert failed_card.clawback.status == pb.CLAWBACK_STATUS_PENDING
    assert failed_card.clawback.amount_fen == 150
    failed = [
        events_pb2.CommitmentFailed.FromString(p)
        for p in await outbox(world, mall.mall_id, "coupons.commitment.failed")
    ]
    assert [(f.card_id, f.clawback_fen) for f in failed] == [(quitter_card.card_id, 150)]
    assert (await get_card(world, mall, keeper_card.card_id)).status == (
        pb.COMMITMENT_CARD_STATUS_FULFILLED
    )

    # The platform fails once, then the retry collects it through pay-score.
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{world.sim.url}/control/payscore/faults", json={"fail_next": 1}
        ) as resp:
            assert resp.status == 200
        pool = await asyncpg.create_pool(world.url, min_size=1, max_size=4)
        try:
            payscore = WeChatPayScore(world.platform, service_id="card", notify_url="https://n/x")
            worker = ClawbackWorker(pool, payscore, policy=FAST)

            async def collected() -> bool:
                await worker.deliver_due()
                c = await get_card(world, mall, quitter_card.card_id)
                return c.clawback.status == pb.CLAWBACK_STATUS_COLLECTED

            await eventually(collected, "the clawback collected")
        finally:
            await pool.close()
        async with http.get(
            f"{world.sim.url}/control/payscore/orders",
            params={"openid": f"o-{quitter[:12]}"},
        ) as resp:
            orders = (await resp.json())["orders"]
    assert [(o["total_amount"], o["appid"], o["state"]) for o in orders] == [(150, APPID, "DONE")]
    claw = (await get_card(world, mall, quitter_card.card_id)).clawback
    assert claw.attempts == 2
    assert claw.out_order_no == orders[0]["out_order_no"]
    clawed = [
        events_pb2.CommitmentClawedBack.FromString(p)
        for p in await outbox(world, mall.mall_id, "coupons.commitment.clawed_back")
    ]
    assert [(c.card_id, c.amount_fen) for c in clawed] == [(quitter_card.card_id, 150)]


async def test_the_same_payment_twice_counts_once(world: World, mall: Mall) -> None:
    o = await offer(world, mall)
    member, c = await accept(world, mall, o.offer_id)
    transaction_id = await pay(world, mall, member, 500)
    await pay(world, mall, member, 500, transaction_id)  # a new event for the same payment
    await pay(world, mall, member, 600)
    seen = await counted(world, mall, c.card_id, 2)
    await asyncio.sleep(0.2)
    assert (await get_card(world, mall, c.card_id)).purchases_made == 2
    assert seen.discount_given_fen == 0


async def test_a_retried_checkout_gets_the_same_discount_once(world: World, mall: Mall) -> None:
    o = await offer(world, mall)
    member, c = await accept(world, mall, o.offer_id)
    request = pb.ApplyCommitmentDiscountRequest(
        mall_id=mall.mall_id,
        member_id=member,
        store_id=mall.store_id,
        order_amount_fen=800,
        request_id="pos-lane-1-receipt-77",
    )
    first = await world.api.ApplyCommitmentDiscount(request, metadata=tenant(mall))
    again = await world.api.ApplyCommitmentDiscount(request, metadata=tenant(mall))
    assert (
        (first.discount_fen, first.card_id)
        == (again.discount_fen, again.card_id)
        == (
            150,
            c.card_id,
        )
    )
    applied = await fetchval(
        world, "SELECT count(*) FROM commitment_applications WHERE mall_id = $1", mall.mall_id
    )
    assert applied == 1
    # Accepting the same offer again is the same card.
    again_card = await world.api.AcceptCommitmentCard(
        pb.AcceptCommitmentCardRequest(
            mall_id=mall.mall_id, offer_id=o.offer_id, member_id=member, appid=APPID, openid="o"
        )
    )
    assert again_card.card.card_id == c.card_id


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return caught.value.code(), error.code


async def test_tenant_rpcs_need_the_tenants_own_credential_and_stores(
    world: World, mall: Mall
) -> None:
    o = await offer(world, mall)
    member, _ = await accept(world, mall, o.offer_id)
    apply = pb.ApplyCommitmentDiscountRequest(
        mall_id=mall.mall_id,
        member_id=member,
        store_id=mall.store_id,
        order_amount_fen=800,
        request_id=str(uuid.uuid4()),
    )
    assert await refused(world.api.ApplyCommitmentDiscount(apply)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_credential",
    )
    wrong = (("x-mall-credential", mall.credential.split(".")[0] + ".not-the-secret"),)
    assert (await refused(world.api.ApplyCommitmentDiscount(apply, metadata=wrong)))[1] == (
        "invalid_credential"
    )
    other_store = pb.ApplyCommitmentDiscountRequest()
    other_store.CopyFrom(apply)
    other_store.store_id = mall.other_store_id
    assert await refused(world.api.ApplyCommitmentDiscount(other_store, metadata=tenant(mall))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "store_not_yours",
    )
    other_mall = pb.ApplyCommitmentDiscountRequest()
    other_mall.CopyFrom(apply)
    other_mall.mall_id = f"{mall.mall_id}-x"
    assert (await refused(world.api.ApplyCommitmentDiscount(other_mall, metadata=tenant(mall))))[
        1
    ] == "mall_not_yours"
    bad_offer = pb.CreateCommitmentOfferRequest(
        offer=pb.CommitmentOffer(
            mall_id=mall.mall_id,
            title="x",
            store_ids=[mall.other_store_id],
            purchases_required=3,
            window_days=15,
            min_amount_fen=400,
            discount_fen=150,
        ),
        request_id="r1",
    )
    assert (await refused(world.api.CreateCommitmentOffer(bad_offer, metadata=tenant(mall))))[
        1
    ] == "store_not_yours"
    no_payer = pb.AcceptCommitmentCardRequest(
        mall_id=mall.mall_id, offer_id=o.offer_id, member_id=str(uuid.uuid4())
    )
    assert (await refused(world.api.AcceptCommitmentCard(no_payer)))[1] == "missing_payer"


async def test_a_store_that_changes_hands_in_the_directory_is_no_longer_the_tenants(
    world: World, mall: Mall
) -> None:
    o = await offer(world, mall)
    member, _ = await accept(world, mall, o.offer_id)
    kv = await open_bucket(world.js, DIRECTORY_BUCKET)
    moved = directory_pb2.Store(mall_id=mall.mall_id, tenant_id="new-owner", store_id="s1")
    await kv.put(f"store.{mall.mall_id}.s1", moved.SerializeToString())

    async def refused_there() -> bool:
        apply = pb.ApplyCommitmentDiscountRequest(
            mall_id=mall.mall_id,
            member_id=member,
            store_id=mall.store_id,
            order_amount_fen=800,
            request_id=str(uuid.uuid4()),
        )
        try:
            await world.api.ApplyCommitmentDiscount(apply, metadata=tenant(mall))
        except grpc.aio.AioRpcError as rpc_error:
            error = from_rpc_error(rpc_error)
            return error is not None and error.code == "store_not_yours"
        return False

    await eventually(refused_there, "the store's new owner in the directory copy")
    code, reason = await refused(offer(world, mall))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "store_not_yours")


async def test_two_sweeps_at_once_fail_and_remind_each_card_once(world: World, mall: Mall) -> None:
    o = await offer(world, mall)
    cards = []
    for _ in range(6):
        member, c = await accept(world, mall, o.offer_id)
        assert await checkout(world, mall, member, 400) == 150
        cards.append(c)
    for c in cards:
        await counted(world, mall, c.card_id, 1)
    deadline = max(to_datetime(c.deadline) for c in cards)

    async def run(moment: datetime, limit: int) -> None:
        conn = await asyncpg.connect(world.url)
        try:
            await sweep(conn, moment, limit=limit, grace=timedelta(0))
        finally:
            await conn.close()

    # Two replicas remind a day before the deadline, then both fail the cards after it,
    # in small batches so that they really interleave.
    day_before = deadline - timedelta(days=1)
    await asyncio.gather(run(day_before, 2), run(day_before, 2))
    await asyncio.gather(run(day_before, 2), run(deadline, 2), run(deadline, 2))
    await asyncio.gather(run(deadline, 1), run(deadline + timedelta(hours=1), 1))

    expiring = [
        events_pb2.CommitmentExpiring.FromString(p).card_id
        for p in await outbox(world, mall.mall_id, "coupons.commitment.expiring")
    ]
    failed = [
        events_pb2.CommitmentFailed.FromString(p).card_id
        for p in await outbox(world, mall.mall_id, "coupons.commitment.failed")
    ]
    ids = sorted(c.card_id for c in cards)
    assert sorted(expiring) == ids
    assert sorted(failed) == ids
    queued = await fetchval(
        world,
        "SELECT count(*) FROM commitment_clawbacks WHERE mall_id = $1 AND amount_fen = 150",
        mall.mall_id,
    )
    assert queued == len(cards)
    conn = await asyncpg.connect(world.url)
    try:
        open_ones = [
            c for c in await clawbacks.list_open(conn, 10_000) if c.mall_id == mall.mall_id
        ]
    finally:
        await conn.close()
    assert len({c.out_order_no for c in open_ones}) == len(cards)


async def fail_one_card(world: World, mall: Mall) -> tuple[str, str]:
    """A card given one discount, past its deadline: failed, its clawback queued."""
    o = await offer(world, mall)
    member, c = await accept(world, mall, o.offer_id)
    assert await checkout(world, mall, member, 400) == 150
    await counted(world, mall, c.card_id, 1)
    conn = await asyncpg.connect(world.url)
    try:
        await sweep(conn, to_datetime(c.deadline), grace=timedelta(0))
    finally:
        await conn.close()
    return member, c.card_id


async def test_a_refused_clawback_waits_for_ops_who_list_and_send_it_again(
    world: World, mall: Mall, capsys: pytest.CaptureFixture[str]
) -> None:
    _, card_id = await fail_one_card(world, mall)
    # Other tests' failed cards (the sweep spans malls) wait, so the fault hits this one.
    await fetchval(
        world,
        """UPDATE commitment_clawbacks SET next_attempt_at = now() + interval '1 hour'
            WHERE status = 'pending' AND NOT (mall_id = $1 AND card_id = $2::uuid)""",
        mall.mall_id,
        card_id,
    )
    async with aiohttp.ClientSession() as http:
        fault = {"fail_next": 1, "status": 403}
        async with http.post(f"{world.sim.url}/control/payscore/faults", json=fault) as resp:
            assert resp.status == 200
    pool = await asyncpg.create_pool(world.url, min_size=1, max_size=4)
    try:
        payscore = WeChatPayScore(world.platform, service_id="card", notify_url="https://n/x")
        worker = ClawbackWorker(pool, payscore, policy=FAST)

        async def status_is(wanted: int) -> bool:
            await worker.deliver_due()
            return (await get_card(world, mall, card_id)).clawback.status == wanted

        await eventually(lambda: status_is(pb.CLAWBACK_STATUS_REFUSED), "the refusal")
        claw = (await get_card(world, mall, card_id)).clawback
        assert claw.last_error_code == "NO_AUTH"
        await worker.deliver_due()  # a refused clawback is not retried by itself
        assert (await get_card(world, mall, card_id)).clawback.attempts == 1

        commands = commitment_commands(pool.acquire, timedelta(days=2), GRACE)
        capsys.readouterr()
        assert await commands["commitment-clawbacks"]([]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert {(c["card_id"], c["status"]) for c in listed} >= {(card_id, "refused")}
        assert await commands["commitment-clawback-retry"]([mall.mall_id, card_id]) == 0
        await eventually(lambda: status_is(pb.CLAWBACK_STATUS_COLLECTED), "the collection")
        assert await commands["commitment-clawback-retry"]([mall.mall_id, card_id]) == 1
    finally:
        await pool.close()


async def test_the_relay_role_collects_clawbacks_through_the_configured_platform(
    world: World, mall: Mall, nats_url: str, tmp_path: Path
) -> None:
    """The wiring: WECHATPAY_* settings (key files) → the relay role's clawback worker."""
    member, card_id = await fail_one_card(world, mall)
    merchant = world.sim.settings.merchant_map()[MCHID]
    key_file, platform_file = tmp_path / "merchant.pem", tmp_path / "platform.pem"
    key_file.write_bytes(signing.private_key_pem(world.merchant_key))
    platform_file.write_bytes(signing.public_key_pem(world.sim.settings.platform_public_key))
    commitments = CommitmentSettings(
        commitment_sweep_interval_s=3600,
        wechatpay_api_base=world.sim.url,
        wechatpay_mchid=MCHID,
        wechatpay_merchant_serial=merchant.serial_no or "",
        wechatpay_merchant_private_key_file=key_file,
        wechatpay_platform_public_keys={world.sim.settings.platform_serial: platform_file},
        clawback_poll_interval_s=0.05,
    )
    settings = Settings(database_url=world.url, nats_url=nats_url, grpc_port=0, log_level="warning")
    async with bootstrap(settings, commitments) as roles, running(roles, ("relay",)):

        async def collected() -> bool:
            claw = (await get_card(world, mall, card_id)).clawback
            return claw.status == pb.CLAWBACK_STATUS_COLLECTED

        await eventually(collected, "the relay role's worker collecting")
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{world.sim.url}/control/payscore/orders", params={"openid": f"o-{member[:12]}"}
        ) as resp,
    ):
        orders = (await resp.json())["orders"]
    assert [o["total_amount"] for o in orders] == [150]


async def refund(
    world: World, mall: Mall, member_id: str, transaction_id: str, amount_fen: int
) -> None:
    message = member_events.RefundAttributed(
        event_id=str(uuid.uuid4()),
        mall_id=mall.mall_id,
        member_id=member_id,
        store_id=mall.store_id,
        transaction_id=transaction_id,
        refund_id=f"5030{uuid.uuid4().hex[:24]}",
        refund_amount_fen=amount_fen,
        pay_amount_fen=amount_fen,
    )
    await world.js.publish(
        "member.refund.attributed",
        message.SerializeToString(),
        headers={"Nats-Msg-Id": message.event_id},
    )


async def test_a_refunded_purchase_stops_counting_with_its_discount(
    world: World, mall: Mall
) -> None:
    o = await offer(world, mall)
    member, c = await accept(world, mall, o.offer_id)
    assert await checkout(world, mall, member, 600) == 150  # pays 450
    counted_once = await counted(world, mall, c.card_id, 1)
    assert counted_once.discount_given_fen == 150
    [first] = await fetch_transactions(world, c.card_id)

    await refund(world, mall, member, first, 100)  # 350 paid + 150 off: still >= 400
    await refunds_seen(world, mall, first, 1)
    assert (await get_card(world, mall, c.card_id)).purchases_made == 1
    await refund(world, mall, member, first, 250)  # 100 paid + 150 off: no longer

    async def uncounted() -> bool:
        card = await get_card(world, mall, c.card_id)
        return (card.purchases_made, card.discount_given_fen) == (0, 0)

    await eventually(uncounted, "the refunded purchase taken off the card")
    assert await fetch_transactions(world, c.card_id) == []

    # A refund that comes before its payment: the payment never counts.
    early = f"4200{uuid.uuid4().hex[:24]}"
    await refund(world, mall, member, early, 500)
    await refunds_seen(world, mall, early, 1)
    await pay(world, mall, member, 500, early)
    await pay(world, mall, member, 450)  # a marker that counts, after the early one
    later = await counted(world, mall, c.card_id, 1)
    assert (later.purchases_made, later.discount_given_fen) == (1, 0)
    assert len(await fetch_transactions(world, c.card_id)) == 1


async def refunds_seen(world: World, mall: Mall, transaction_id: str, count: int) -> None:
    async def seen() -> bool:
        found = await fetchval(
            world,
            """SELECT count(*) FROM commitment_refunds
                WHERE mall_id = $1 AND transaction_id = $2""",
            mall.mall_id,
            transaction_id,
        )
        return bool(found == count)

    await eventually(seen, f"{count} refunds of {transaction_id} recorded")


async def fetch_transactions(world: World, card_id: str) -> list[str]:
    conn = await asyncpg.connect(world.url)
    try:
        rows = await conn.fetch(
            """SELECT transaction_id FROM commitment_purchases
                WHERE card_id = $1::uuid AND voided_at IS NULL ORDER BY number""",
            card_id,
        )
    finally:
        await conn.close()
    return [r["transaction_id"] for r in rows]


async def test_a_card_gives_no_more_discounts_than_purchases_while_orders_await_payment(
    world: World, mall: Mall
) -> None:
    o = await offer(world, mall)
    member, _ = await accept(world, mall, o.offer_id)

    async def ask() -> int:
        reply = await world.api.ApplyCommitmentDiscount(
            pb.ApplyCommitmentDiscountRequest(
                mall_id=mall.mall_id,
                member_id=member,
                store_id=mall.store_id,
                order_amount_fen=500,
                request_id=str(uuid.uuid4()),
            ),
            metadata=tenant(mall),
        )
        return reply.discount_fen

    assert [await ask() for _ in range(4)] == [150, 150, 150, 0]


async def test_a_payment_made_before_the_deadline_that_arrives_late_still_counts(
    world: World, mall: Mall
) -> None:
    o = await offer(world, mall)
    member, c = await accept(world, mall, o.offer_id)
    for i in (1, 2):
        assert await checkout(world, mall, member, 400) == 150
        await counted(world, mall, c.card_id, i)
    deadline = to_datetime(c.deadline)
    conn = await asyncpg.connect(world.url)
    try:
        # Within the grace after the deadline the card is not settled yet ...
        await sweep(conn, deadline + GRACE - timedelta(seconds=1))
        assert (await get_card(world, mall, c.card_id)).status == (pb.COMMITMENT_CARD_STATUS_ACTIVE)
        # ... so the third purchase, paid a minute before the deadline, reaching coupons late,
        # still counts; a payment made after the deadline does not.
        await pay(world, mall, member, 500, paid_at=deadline + timedelta(seconds=1))
        await pay(world, mall, member, 500, paid_at=deadline - timedelta(minutes=1))
        done = await counted(world, mall, c.card_id, 3)
        assert done.status == pb.COMMITMENT_CARD_STATUS_FULFILLED
        assert await sweep(conn, deadline + GRACE) is not None
    finally:
        await conn.close()
    assert (await get_card(world, mall, c.card_id)).status == (pb.COMMITMENT_CARD_STATUS_FULFILLED)
    assert len(await fetch_transactions(world, c.card_id)) == 3
