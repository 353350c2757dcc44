"""Service layer on real PostgreSQL: a payment makes a member (支付即会员) exactly once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import pytest
from kit.errors import ErrorKind, InvalidInput, NotFound
from kit.migrations import migrate
from mall.member.v1 import events_pb2, member_pb2
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS
from member.domain.model import Attribution, CapturedPayment, CapturedRefund
from member.service_layer import directory
from member.service_layer.payments import attribute_payments
from member.service_layer.refunds import attribute_refunds

JOINED = "member.member.joined"
ATTRIBUTED = "member.payment.attributed"


@dataclass(frozen=True)
class Shop:
    mall_id: str
    appid: str
    tenant_id: str
    store_id: str
    shop_number: str


@dataclass(frozen=True)
class Outgoing:
    subject: str
    payload: bytes
    headers: dict[str, str]


@pytest.fixture(scope="module")
async def member_db(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("member")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture
async def conn(member_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(member_db)
    try:
        yield connection
    finally:
        await connection.close()


async def open_shop(conn: asyncpg.Connection, tag: str) -> Shop:
    """A mall of its own with one tenant and one store (unique per call)."""
    shop = Shop(f"mall-{tag}", f"wx{tag}", f"tenant-{tag}", f"store-{tag}", f"SHOP-{tag}")
    async with conn.transaction():
        await directory.create_mall(
            conn,
            mall_id=shop.mall_id,
            name=f"Mall {tag}",
            appid=shop.appid,
            brand_id="brand",
            mchid="1900000109",
            time_zone="Asia/Shanghai",
        )
        await directory.create_tenant(
            conn, mall_id=shop.mall_id, tenant_id=shop.tenant_id, name="Coffee", category="food"
        )
        await directory.create_store(
            conn,
            mall_id=shop.mall_id,
            tenant_id=shop.tenant_id,
            store_id=shop.store_id,
            name="Coffee L1",
            mchid="1900000109",
            sub_mchid="1900000110",
            shop_number=shop.shop_number,
        )
    return shop


@pytest.fixture
async def shop(conn: asyncpg.Connection, unique_id: str) -> Shop:
    return await open_shop(conn, unique_id)


def captured(
    shop: Shop,
    openid: str,
    *,
    amount_fen: int = 12_345,
    transaction_id: str | None = None,
    appid: str | None = None,
    shop_number: str | None = None,
) -> CapturedPayment:
    return CapturedPayment(
        event_id=str(uuid.uuid4()),
        transaction_id=transaction_id or f"4200{uuid.uuid4().hex[:20]}",
        appid=shop.appid if appid is None else appid,
        mchid="1900000109",
        shop_number=shop.shop_number if shop_number is None else shop_number,
        openid=openid,
        amount_fen=amount_fen,
        paid_at=datetime(2025, 11, 26, 6, 30, tzinfo=UTC),
    )


async def attribute(
    conn: asyncpg.Connection, *payments: CapturedPayment, headers: dict[str, str] | None = None
) -> list[Attribution]:
    async with conn.transaction():
        return await attribute_payments(conn, [(p, headers or {}) for p in payments])


async def outbox(conn: asyncpg.Connection, mall_id: str) -> list[Outgoing]:
    """The payment path's events (the directory set-up queues its own, not checked here)."""
    rows = await conn.fetch(
        """SELECT subject, payload, headers FROM outbox
            WHERE mall_id = $1 AND subject NOT LIKE 'member.directory.%' ORDER BY seq""",
        mall_id,
    )
    return [Outgoing(r["subject"], r["payload"], json.loads(r["headers"])) for r in rows]


async def count(conn: asyncpg.Connection, table: str, mall_id: str) -> int:
    assert table in {"members", "identities", "payments", "outbox"}
    value: int = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE mall_id = $1", mall_id)
    return value


def openid() -> str:
    return f"o-{uuid.uuid4().hex}"


# -- joining --------------------------------------------------------------------------------


async def test_a_first_payment_joins_a_new_member(conn: asyncpg.Connection, shop: Shop) -> None:
    payer = openid()
    payment = captured(shop, payer, amount_fen=12_345)

    [done] = await attribute(conn, payment)

    assert done.member.joined_now
    assert done.member.tier_code == "basic"
    member = await conn.fetchrow(
        "SELECT member_id, tier_code, join_channel FROM members WHERE mall_id = $1", shop.mall_id
    )
    assert member is not None
    assert str(member["member_id"]) == done.member.member_id
    assert (member["tier_code"], member["join_channel"]) == ("basic", "payment")
    identity = await conn.fetchrow(
        "SELECT kind, value, member_id FROM identities WHERE mall_id = $1", shop.mall_id
    )
    assert identity is not None
    assert (identity["kind"], identity["value"]) == ("openid", payer)
    assert identity["member_id"] == member["member_id"]
    recorded = await conn.fetchrow(
        """SELECT transaction_id, member_id, tenant_id, store_id, amount_fen, source, paid_at
             FROM payments WHERE mall_id = $1""",
        shop.mall_id,
    )
    assert recorded is not None
    assert dict(recorded) == {
        "transaction_id": payment.transaction_id,
        "member_id": member["member_id"],
        "tenant_id": shop.tenant_id,
        "store_id": shop.store_id,
        "amount_fen": 12_345,
        "source": "wechat_pay",
        "paid_at": payment.paid_at,
    }

    events = await outbox(conn, shop.mall_id)
    assert [e.subject for e in events] == [JOINED, ATTRIBUTED]
    joined = events_pb2.MemberJoined.FromString(events[0].payload)
    assert joined.mall_id == shop.mall_id
    assert joined.member_id == done.member.member_id
    assert joined.channel == member_pb2.JOIN_CHANNEL_PAYMENT
    assert joined.transaction_id == payment.transaction_id
    attributed = events_pb2.PaymentAttributed.FromString(events[1].payload)
    assert attributed.mall_id == shop.mall_id
    assert attributed.member_id == done.member.member_id
    assert attributed.tier_code == "basic"
    assert (attributed.tenant_id, attributed.store_id) == (shop.tenant_id, shop.store_id)
    assert attributed.tenant_category == "food"
    assert attributed.amount_fen == 12_345
    assert attributed.transaction_id == payment.transaction_id
    assert (attributed.appid, attributed.openid) == (shop.appid, payer)
    assert attributed.paid_at.ToDatetime(tzinfo=UTC) == payment.paid_at
    assert attributed.event_id != joined.event_id


async def test_a_second_payment_by_the_same_openid_reuses_the_member(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    payer = openid()
    [first] = await attribute(conn, captured(shop, payer, amount_fen=1_000))

    [second] = await attribute(conn, captured(shop, payer, amount_fen=2_000))

    assert not second.member.joined_now
    assert second.member.member_id == first.member.member_id
    assert await count(conn, "members", shop.mall_id) == 1
    assert await count(conn, "identities", shop.mall_id) == 1
    owners = await conn.fetch(
        "SELECT DISTINCT member_id FROM payments WHERE mall_id = $1", shop.mall_id
    )
    assert [str(r["member_id"]) for r in owners] == [first.member.member_id]
    assert [e.subject for e in await outbox(conn, shop.mall_id)] == [
        JOINED,
        ATTRIBUTED,
        ATTRIBUTED,
    ]


async def test_different_shoppers_become_different_members(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    done = await attribute(conn, captured(shop, openid()), captured(shop, openid()))

    assert len({a.member.member_id for a in done}) == 2
    assert await count(conn, "members", shop.mall_id) == 2


async def test_the_same_openid_in_two_malls_is_two_members(
    conn: asyncpg.Connection, shop: Shop, unique_id: str
) -> None:
    other = await open_shop(conn, f"{unique_id}-b")
    payer = openid()

    [here] = await attribute(conn, captured(shop, payer))
    [there] = await attribute(conn, captured(other, payer))

    assert there.member.joined_now
    assert here.member.member_id != there.member.member_id
    assert (here.member.mall_id, there.member.mall_id) == (shop.mall_id, other.mall_id)


async def test_correlation_headers_travel_with_each_event(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    headers = {"x-correlation-id": f"corr-{uuid.uuid4().hex}"}

    await attribute(conn, captured(shop, openid()), headers=headers)

    events = await outbox(conn, shop.mall_id)
    assert len(events) == 2
    assert all(e.headers == headers for e in events)


# -- idempotency ----------------------------------------------------------------------------


async def test_the_same_transaction_twice_is_recorded_once(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    payment = captured(shop, openid())
    await attribute(conn, payment)

    again = await attribute(conn, payment)

    assert again == []
    assert await count(conn, "payments", shop.mall_id) == 1
    assert await count(conn, "members", shop.mall_id) == 1
    assert [e.subject for e in await outbox(conn, shop.mall_id)] == [JOINED, ATTRIBUTED]


async def test_a_transaction_repeated_within_one_batch_is_recorded_once(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    payment = captured(shop, openid())
    redelivered = captured(shop, payment.openid, transaction_id=payment.transaction_id)

    done = await attribute(conn, payment, redelivered)

    assert len(done) == 1
    assert await count(conn, "payments", shop.mall_id) == 1
    assert [e.subject for e in await outbox(conn, shop.mall_id)] == [JOINED, ATTRIBUTED]


# -- refusals -------------------------------------------------------------------------------


async def test_an_unknown_appid_is_refused_and_changes_nothing(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    payer = openid()

    with pytest.raises(NotFound) as caught:
        await attribute(conn, captured(shop, payer, appid=f"wx-unknown-{uuid.uuid4().hex[:8]}"))

    assert caught.value.code == "unknown_mall"
    assert caught.value.kind is ErrorKind.NOT_FOUND
    assert await conn.fetchval("SELECT count(*) FROM identities WHERE value = $1", payer) == 0


async def test_an_unknown_shop_is_refused_and_changes_nothing(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    with pytest.raises(NotFound) as caught:
        await attribute(conn, captured(shop, openid(), shop_number="SHOP-NOBODY"))

    assert caught.value.code == "unknown_shop"
    assert await count(conn, "members", shop.mall_id) == 0


async def test_a_refused_batch_keeps_none_of_its_payments(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    good = captured(shop, openid())
    bad = captured(shop, openid(), shop_number="SHOP-NOBODY")

    with pytest.raises(NotFound):
        await attribute(conn, good, bad)

    for table in ("members", "identities", "payments"):
        assert await count(conn, table, shop.mall_id) == 0, table
    assert await outbox(conn, shop.mall_id) == []


async def test_a_shop_number_of_another_mall_is_unknown_here(
    conn: asyncpg.Connection, shop: Shop, unique_id: str
) -> None:
    other = await open_shop(conn, f"{unique_id}-b")

    with pytest.raises(NotFound) as caught:
        await attribute(conn, captured(shop, openid(), shop_number=other.shop_number))

    assert caught.value.code == "unknown_shop"


# -- concurrency ----------------------------------------------------------------------------


async def test_concurrent_first_payments_of_one_shopper_join_one_member(
    member_db: str, conn: asyncpg.Connection, shop: Shop
) -> None:
    payer = openid()
    payments = [captured(shop, payer, amount_fen=100 * (i + 1)) for i in range(4)]
    connections = [await asyncpg.connect(member_db) for _ in payments]
    try:
        results = await asyncio.gather(
            *(attribute(c, p) for c, p in zip(connections, payments, strict=True))
        )
    finally:
        for c in connections:
            await c.close()

    member_ids = {a.member.member_id for done in results for a in done}
    assert len(member_ids) == 1
    assert sum(a.member.joined_now for done in results for a in done) == 1
    assert await count(conn, "members", shop.mall_id) == 1
    assert await count(conn, "identities", shop.mall_id) == 1
    assert await count(conn, "payments", shop.mall_id) == 4
    subjects = [e.subject for e in await outbox(conn, shop.mall_id)]
    assert subjects.count(JOINED) == 1
    assert subjects.count(ATTRIBUTED) == 4


async def _wait_until_blocked(observer: asyncpg.Connection, pid: int) -> None:
    """Until backend ``pid`` waits on a lock held by another transaction."""
    for _ in range(1_000):
        waiting = await observer.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never blocked on the contested identity")


async def test_a_join_racing_an_uncommitted_join_adopts_its_member(
    member_db: str, conn: asyncpg.Connection, shop: Shop
) -> None:
    """Forces the interleaving: B claims the identity while A's claim is not yet committed."""
    payer = openid()
    first, second = await asyncpg.connect(member_db), await asyncpg.connect(member_db)
    try:
        tx = first.transaction()
        await tx.start()
        [winner] = await attribute_payments(first, [(captured(shop, payer), {})])
        racing = asyncio.create_task(attribute(second, captured(shop, payer)))
        await _wait_until_blocked(conn, second.get_server_pid())
        await tx.commit()
        [loser] = await racing
    finally:
        await first.close()
        await second.close()

    assert winner.member.joined_now
    assert not loser.member.joined_now
    assert loser.member.member_id == winner.member.member_id
    assert await count(conn, "members", shop.mall_id) == 1
    assert await count(conn, "payments", shop.mall_id) == 2


async def test_a_join_racing_a_rolled_back_join_creates_the_member(
    member_db: str, conn: asyncpg.Connection, shop: Shop
) -> None:
    payer = openid()
    first, second = await asyncpg.connect(member_db), await asyncpg.connect(member_db)
    try:
        tx = first.transaction()
        await tx.start()
        [abandoned] = await attribute_payments(first, [(captured(shop, payer), {})])
        racing = asyncio.create_task(attribute(second, captured(shop, payer)))
        await _wait_until_blocked(conn, second.get_server_pid())
        await tx.rollback()
        [kept] = await racing
    finally:
        await first.close()
        await second.close()

    assert kept.member.joined_now
    assert kept.member.member_id != abandoned.member.member_id
    rows = await conn.fetch("SELECT member_id FROM members WHERE mall_id = $1", shop.mall_id)
    assert [str(r["member_id"]) for r in rows] == [kept.member.member_id]
    assert [e.subject for e in await outbox(conn, shop.mall_id)] == [JOINED, ATTRIBUTED]


# -- refunds: attributed to their payment, refused beyond it, parked when they come first --

REFUNDED = "member.refund.attributed"


def refund(shop: Shop, transaction_id: str, amount_fen: int, refund_id: str = "") -> CapturedRefund:
    return CapturedRefund(
        event_id=str(uuid.uuid4()),
        refund_id=refund_id or f"5030{uuid.uuid4().hex[:20]}",
        transaction_id=transaction_id,
        appid=shop.appid,
        openid="o-refund",
        refund_amount_fen=amount_fen,
        refunded_at=datetime(2025, 11, 27, 2, 0, tzinfo=UTC),
    )


async def refund_all(conn: asyncpg.Connection, *refunds: CapturedRefund) -> None:
    async with conn.transaction():
        await attribute_refunds(conn, [(r, {}) for r in refunds])


async def events(conn: asyncpg.Connection, mall_id: str) -> list[tuple[str, bytes]]:
    rows = await conn.fetch(
        """SELECT subject, payload FROM outbox WHERE mall_id = $1
            AND subject IN ('member.refund.attributed', 'member.payment.attributed')
            ORDER BY seq""",
        mall_id,
    )
    return [(r["subject"], r["payload"]) for r in rows]


async def test_a_refund_is_attributed_to_the_payment_and_its_member(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    [paid] = await attribute(conn, captured(shop, "o-refund", amount_fen=10_000))
    r = refund(shop, paid.payment.transaction_id, 2_500)

    await refund_all(conn, r)

    subject, payload = (await events(conn, shop.mall_id))[-1]
    assert subject == REFUNDED
    msg = events_pb2.RefundAttributed.FromString(payload)
    assert (msg.member_id, msg.transaction_id, msg.refund_id) == (
        paid.member.member_id,
        paid.payment.transaction_id,
        r.refund_id,
    )
    assert (msg.refund_amount_fen, msg.pay_amount_fen) == (2_500, 10_000)
    assert (msg.tenant_id, msg.store_id) == (shop.tenant_id, shop.store_id)


async def test_the_same_refund_twice_is_one_refund(conn: asyncpg.Connection, shop: Shop) -> None:
    [paid] = await attribute(conn, captured(shop, "o-refund", amount_fen=10_000))
    r = refund(shop, paid.payment.transaction_id, 1_000)

    await refund_all(conn, r)
    await refund_all(conn, r)

    subjects = [s for s, _ in await events(conn, shop.mall_id)]
    assert subjects == [ATTRIBUTED, REFUNDED]


async def test_partial_refunds_add_up_to_the_payment_and_no_further(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    [paid] = await attribute(conn, captured(shop, "o-refund", amount_fen=10_000))
    tx = paid.payment.transaction_id

    await refund_all(conn, refund(shop, tx, 4_000), refund(shop, tx, 6_000))
    with pytest.raises(InvalidInput) as caught:
        await refund_all(conn, refund(shop, tx, 1))

    assert caught.value.code == "refund_exceeds_payment"
    subjects = [s for s, _ in await events(conn, shop.mall_id)]
    assert subjects == [ATTRIBUTED, REFUNDED, REFUNDED]


async def test_a_refund_parking_while_its_payment_is_attributed_is_not_left_parked(
    member_db: str, conn: asyncpg.Connection, shop: Shop
) -> None:
    """Forces the interleaving the storm found: the refund parks (not committed yet) while
    its payment is attributed on another connection. Without one waiting for the other, each
    misses the other and the refund stays parked for good."""
    tx = f"4200{uuid.uuid4().hex[:20]}"
    early = refund(shop, tx, 3_000)
    first, second = await asyncpg.connect(member_db), await asyncpg.connect(member_db)
    try:
        parking = first.transaction()
        await parking.start()
        await attribute_refunds(first, [(early, {})])
        racing = asyncio.create_task(
            attribute(second, captured(shop, openid(), amount_fen=9_000, transaction_id=tx))
        )
        await _wait_until_blocked(conn, second.get_server_pid())
        await parking.commit()
        await racing
    finally:
        await first.close()
        await second.close()

    state = await conn.fetchval(
        "SELECT state FROM refunds WHERE mall_id = $1 AND refund_id = $2",
        shop.mall_id,
        early.refund_id,
    )
    assert state == "attributed"
    assert [s for s, _ in await events(conn, shop.mall_id)] == [ATTRIBUTED, REFUNDED]


async def test_a_refund_before_its_payment_is_parked_then_follows_the_payment(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    tx = f"4200{uuid.uuid4().hex[:20]}"
    early = refund(shop, tx, 3_000)

    await refund_all(conn, early)
    assert await events(conn, shop.mall_id) == []  # nothing to reverse yet
    state = await conn.fetchval(
        "SELECT state FROM refunds WHERE mall_id = $1 AND refund_id = $2",
        shop.mall_id,
        early.refund_id,
    )
    assert state == "parked"

    await attribute(conn, captured(shop, "o-refund", amount_fen=9_000, transaction_id=tx))

    published = await events(conn, shop.mall_id)
    assert [s for s, _ in published] == [ATTRIBUTED, REFUNDED]  # the reversal follows the credit
    msg = events_pb2.RefundAttributed.FromString(published[1][1])
    assert (msg.refund_id, msg.refund_amount_fen, msg.pay_amount_fen) == (
        early.refund_id,
        3_000,
        9_000,
    )
    # Delivered again, the early refund changes nothing more.
    await refund_all(conn, early)
    assert len(await events(conn, shop.mall_id)) == 2


async def test_a_refund_for_an_unknown_mall_is_refused(
    conn: asyncpg.Connection, shop: Shop
) -> None:
    stranger = Shop("nowhere", "wx-nowhere", "t", "s", "SHOP-0")

    with pytest.raises(NotFound) as caught:
        await refund_all(conn, refund(stranger, "4200x", 100))

    assert caught.value.code == "unknown_mall"


def test_a_refund_must_take_back_something() -> None:
    with pytest.raises(InvalidInput) as caught:
        refund(Shop("m", "wx", "t", "s", "n"), "4200x", 0)

    assert caught.value.code == "amount_not_positive"
