"""Commitment cards and the card package mirror follow member merges (member.identity.merged)
on real PostgreSQL: the absorbed member's card counts the survivor's payments (and late ones
still naming the absorbed member), two active cards of one offer fold into one without losing
a purchase or a discount, a settled card moves as it is with its clawback, mirrored coupons
move with the identity they were sent to pinned; a repeated merge changes nothing. The merge
and the payments also arrive over NATS JetStream to the running consume role."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import nats
import pytest
from coupons.adapters import card_package as mirror
from coupons.adapters import card_package_stocks as mirror_stocks
from coupons.adapters import commitment_clawbacks as clawbacks
from coupons.adapters import commitment_repository as repo
from coupons.adapters.commitment_repository import CardRow, Offer
from coupons.bootstrap import MIGRATIONS, bootstrap
from coupons.config import Settings
from coupons.domain.commitment import CardStatus, OfferTerms
from coupons.entrypoints.merge_consumer import IDENTITY_MERGED, on_identity_merged
from coupons.service_layer import commitment, commitment_purchases
from coupons.service_layer.commitment_purchases import Payment, Refund
from eventbus.consumer import Delivery
from kit.cli import running
from kit.migrations import migrate
from kit.proto import timestamp
from mall.member.v1 import events_pb2 as member_events
from mall_testing.locks import while_open
from mall_testing.plugin import FreshDatabase

APPID = "wx0mergecommitment"
#: 3 purchases in 15 days at s1, 1.5 yuan off each order of 4 yuan or more.
TERMS = OfferTerms("15天3次，每次立减1.5元", ("s1",), 3, 15, 400, 150)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)

T = TypeVar("T")


@pytest.fixture(scope="module")
async def url(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture(scope="module")
async def pool(url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(url, min_size=2, max_size=8) as pool:
        yield pool


def member() -> str:
    return str(uuid.uuid4())


async def make_offer(pool: asyncpg.Pool, mall_id: str) -> Offer:
    async with pool.acquire() as conn:
        return await repo.create_offer(conn, mall_id, "coffee", str(uuid.uuid4()), TERMS)


async def accept(pool: asyncpg.Pool, offer: Offer, member_id: str, at: datetime) -> CardRow:
    async with pool.acquire() as conn:
        return await commitment.accept_card(
            conn, offer.mall_id, offer.offer_id, member_id, APPID, f"o-{member_id[:8]}", at
        )


async def checkout(pool: asyncpg.Pool, mall_id: str, member_id: str, at: datetime) -> int:
    """A 5-yuan order at s1: the discount the POS applies."""
    async with pool.acquire() as conn:
        found = await commitment_purchases.apply_discount(
            conn, mall_id, member_id, "s1", 500, str(uuid.uuid4()), at
        )
    return found.discount_fen


async def pay(
    pool: asyncpg.Pool, mall_id: str, member_id: str, at: datetime, discount_fen: int = 0
) -> str:
    """member.payment.attributed of that 5-yuan order (less the discount applied to it)."""
    transaction_id = f"4200{uuid.uuid4().int % 10**12:012d}"
    payment = Payment(mall_id, member_id, "s1", transaction_id, 500 - discount_fen, at)
    async with pool.acquire() as conn, conn.transaction():
        await commitment_purchases.count_payments(conn, [(payment, {})])
    return transaction_id


async def buy(pool: asyncpg.Pool, mall_id: str, member_id: str, at: datetime) -> str:
    """Checkout with the card's discount, then the payment."""
    return await pay(pool, mall_id, member_id, at, await checkout(pool, mall_id, member_id, at))


def merged_event(mall_id: str, survivor: str, absorbed: str) -> Delivery:
    msg = member_events.IdentityMerged(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        survivor_member_id=survivor,
        merged_member_id=absorbed,
        merge_request_id=f"merge-{uuid.uuid4().hex[:8]}",
    )
    return Delivery(event_id=msg.event_id, subject=IDENTITY_MERGED, data=msg.SerializeToString())


async def snapshot(pool: asyncpg.Pool, mall_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the mall that a merge may touch."""
    tables = {
        "commitment_cards": "card_id",
        "commitment_purchases": "card_id, transaction_id",
        "commitment_applications": "application_id",
        "commitment_clawbacks": "card_id",
        "card_package_coupons": "coupon_id",
        "card_package_payers": "member_id",
        "outbox": "event_id",
    }
    found = {}
    for table, order in tables.items():
        rows = await pool.fetch(
            f"SELECT * FROM {table} WHERE mall_id = $1 ORDER BY {order}", mall_id
        )
        found[table] = [dict(r) for r in rows]
    return found


async def merge(pool: asyncpg.Pool, mall_id: str, survivor: str, absorbed: str) -> None:
    """Follow the merge, then again (a redelivery outside the inbox): nothing changes."""
    async with pool.acquire() as conn:
        async with conn.transaction():  # as the batched consumer does
            await on_identity_merged(conn, [merged_event(mall_id, survivor, absorbed)])
        before = await snapshot(pool, mall_id)
        async with conn.transaction():
            await on_identity_merged(conn, [merged_event(mall_id, survivor, absorbed)])
    assert await snapshot(pool, mall_id) == before


async def sweep_at(pool: asyncpg.Pool, moment: datetime) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await commitment.fail_due(conn, moment, limit=1000)


async def cards_of(pool: asyncpg.Pool, mall_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT card_id::text AS card_id, member_id, merged_from, status, purchases_made,
                  discount_given_fen, accepted_at, deadline
             FROM commitment_cards WHERE mall_id = $1 ORDER BY accepted_at""",
        mall_id,
    )


async def events_of(pool: asyncpg.Pool, mall_id: str, subject: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE mall_id = $1 AND subject = $2", mall_id, subject
        )
    )


# -- commitment cards ------------------------------------------------------------------------


async def test_the_absorbed_members_card_is_fulfilled_by_the_survivors_payments(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = member(), member()
    offer = await make_offer(pool, mall_id)
    card = await accept(pool, offer, absorbed, T0)
    await buy(pool, mall_id, absorbed, T0 + timedelta(days=1))

    await merge(pool, mall_id, survivor, absorbed)

    # The survivor's checkout gets the card's discount and its payment counts; a payment that
    # still names the absorbed member (attributed before the merge, consumed after) counts too.
    assert await checkout(pool, mall_id, survivor, T0 + timedelta(days=2)) == 150
    await pay(pool, mall_id, survivor, T0 + timedelta(days=2), 150)
    await pay(pool, mall_id, absorbed, T0 + timedelta(days=3))
    (row,) = await cards_of(pool, mall_id)
    assert (row["card_id"], row["member_id"]) == (card.card_id, survivor)
    assert (row["status"], row["purchases_made"], row["discount_given_fen"]) == (
        "fulfilled",
        3,
        300,
    )
    # The deadline passes: nothing fails, nothing is clawed back.
    await sweep_at(pool, card.card.deadline + timedelta(days=1))
    async with pool.acquire() as conn:
        assert await clawbacks.get(conn, mall_id, card.card_id) is None
        assert [c.card_id for c in await repo.member_cards(conn, mall_id, survivor)] == [
            card.card_id
        ]
        assert await repo.member_cards(conn, mall_id, absorbed) == []
    assert await events_of(pool, mall_id, "coupons.commitment.failed") == 0


async def test_two_active_cards_of_an_offer_fold_into_one_losing_no_purchase(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = member(), member()
    offer = await make_offer(pool, mall_id)
    theirs = await accept(pool, offer, absorbed, T0)
    ours = await accept(pool, offer, survivor, T0 + timedelta(days=2))
    first = await buy(pool, mall_id, absorbed, T0 + timedelta(hours=1))
    second = await buy(pool, mall_id, survivor, T0 + timedelta(days=2, hours=1))
    # A discount applied on the absorbed member's card whose payment has not come yet.
    assert await checkout(pool, mall_id, absorbed, T0 + timedelta(days=3)) == 150

    await merge(pool, mall_id, survivor, absorbed)

    (row,) = await cards_of(pool, mall_id)
    assert (row["card_id"], row["member_id"], row["merged_from"]) == (ours.card_id, survivor, "")
    assert (row["status"], row["purchases_made"], row["discount_given_fen"]) == (
        "active",
        2,
        300,
    )
    # Its window spans both: the earliest acceptance, the latest deadline.
    assert (row["accepted_at"], row["deadline"]) == (theirs.card.accepted_at, ours.card.deadline)
    purchases = await pool.fetch(
        """SELECT card_id::text AS card_id, transaction_id, discount_fen
             FROM commitment_purchases WHERE mall_id = $1 ORDER BY paid_at""",
        mall_id,
    )
    assert [(p["card_id"], p["transaction_id"], p["discount_fen"]) for p in purchases] == [
        (ours.card_id, first, 150),
        (ours.card_id, second, 150),
    ]
    # The awaited payment (still naming the absorbed member) finds its discount and fulfils
    # the one card, announced once.
    await pay(pool, mall_id, absorbed, T0 + timedelta(days=3), 150)
    (row,) = await cards_of(pool, mall_id)
    assert (row["status"], row["purchases_made"], row["discount_given_fen"]) == (
        "fulfilled",
        3,
        450,
    )
    assert await events_of(pool, mall_id, "coupons.commitment.fulfilled") == 1


async def test_a_fold_that_reaches_the_purchases_fulfils_and_one_that_falls_short_claws_back_both(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    offer = await make_offer(pool, mall_id)
    # 2 + 1 purchases: the folded card is fulfilled by the merge.
    survivor, absorbed = member(), member()
    await accept(pool, offer, absorbed, T0)
    ours = await accept(pool, offer, survivor, T0)
    await buy(pool, mall_id, absorbed, T0 + timedelta(hours=1))
    await buy(pool, mall_id, absorbed, T0 + timedelta(hours=2))
    await buy(pool, mall_id, survivor, T0 + timedelta(hours=3))
    await merge(pool, mall_id, survivor, absorbed)
    async with pool.acquire() as conn:
        done = await repo.get_card(conn, mall_id, ours.card_id)
    assert done is not None
    assert (done.member_id, done.card.status, done.card.purchases_made) == (
        survivor,
        CardStatus.FULFILLED,
        3,
    )
    assert done.card.discount_given_fen == 450
    assert await events_of(pool, mall_id, "coupons.commitment.fulfilled") == 1

    # 1 + 1 purchases: the card fails at its deadline and claws back both discounts.
    other_mall = f"{mall_id}-b"
    offer = await make_offer(pool, other_mall)
    survivor, absorbed = member(), member()
    await accept(pool, offer, absorbed, T0)
    ours = await accept(pool, offer, survivor, T0 + timedelta(days=1))
    await buy(pool, other_mall, absorbed, T0 + timedelta(hours=1))
    await buy(pool, other_mall, survivor, T0 + timedelta(days=1, hours=1))
    await merge(pool, other_mall, survivor, absorbed)
    await sweep_at(pool, ours.card.deadline + timedelta(hours=1))
    async with pool.acquire() as conn:
        owed = await clawbacks.get(conn, other_mall, ours.card_id)
    assert owed is not None
    assert (owed.member_id, owed.amount_fen) == (survivor, 300)
    assert len(await cards_of(pool, other_mall)) == 1


async def test_a_settled_card_moves_as_it_is_beside_the_survivors_with_its_clawback(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = member(), member()
    offer = await make_offer(pool, mall_id)
    theirs = await accept(pool, offer, absorbed, T0 - timedelta(days=20))
    await buy(pool, mall_id, absorbed, T0 - timedelta(days=19))
    await sweep_at(pool, T0)  # the absorbed member's card failed: 1.5 yuan to claw back
    ours = await accept(pool, offer, survivor, T0)

    await merge(pool, mall_id, survivor, absorbed)

    rows = await cards_of(pool, mall_id)
    assert [(r["card_id"], r["member_id"], r["merged_from"], r["status"]) for r in rows] == [
        (theirs.card_id, survivor, absorbed, "failed"),
        (ours.card_id, survivor, "", "active"),
    ]
    async with pool.acquire() as conn:
        owed = await clawbacks.get(conn, mall_id, theirs.card_id)
        again = await commitment.accept_card(
            conn, mall_id, offer.offer_id, survivor, APPID, "o-again", T0 + timedelta(days=1)
        )
    assert owed is not None
    # The clawback is the survivor's now, deducted as before from whoever accepted the card.
    assert (owed.member_id, owed.amount_fen, owed.openid) == (survivor, 150, theirs.openid)
    assert again.card_id == ours.card_id  # accepting again finds the survivor's own card
    # The survivor's payments count on its active card only.
    await buy(pool, mall_id, survivor, T0 + timedelta(days=1))
    rows = await cards_of(pool, mall_id)
    assert [r["purchases_made"] for r in rows] == [1, 1]


async def while_merging(
    pool: asyncpg.Pool, mall_id: str, survivor: str, absorbed: str, during: Awaitable[T]
) -> T:
    """Follow the merge in a transaction held open until ``during`` waits on it."""

    async def merging(conn: asyncpg.Connection) -> None:
        await on_identity_merged(conn, [merged_event(mall_id, survivor, absorbed)])

    return await while_open(pool, merging, during)


@pytest.mark.parametrize("survivors_card", [False, True], ids=["moved", "folded"])
async def test_a_payment_counted_while_the_merge_commits_counts_on_the_survivors_card(
    pool: asyncpg.Pool, unique_id: str, survivors_card: bool
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = member(), member()
    offer = await make_offer(pool, mall_id)
    theirs = await accept(pool, offer, absorbed, T0)
    kept = await accept(pool, offer, survivor, T0) if survivors_card else theirs
    await buy(pool, mall_id, absorbed, T0 + timedelta(hours=1))

    # Attributed to the absorbed member before the merge, counted as it commits: it waits for
    # the merge (which holds the card) and counts on the card the survivor holds after it.
    late = await while_merging(
        pool, mall_id, survivor, absorbed, pay(pool, mall_id, absorbed, T0 + timedelta(hours=2))
    )

    (row,) = await cards_of(pool, mall_id)
    assert (row["card_id"], row["member_id"]) == (kept.card_id, survivor)
    assert (row["status"], row["purchases_made"]) == ("active", 2)
    counted = await pool.fetch(
        """SELECT card_id::text AS card_id FROM commitment_purchases
            WHERE mall_id = $1 AND transaction_id = $2""",
        mall_id,
        late,
    )
    assert [r["card_id"] for r in counted] == [kept.card_id]
    assert await events_of(pool, mall_id, "coupons.commitment.progressed") == 2


async def test_a_checkout_while_the_merge_commits_gets_the_survivors_card_discount(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = member(), member()
    offer = await make_offer(pool, mall_id)
    card = await accept(pool, offer, absorbed, T0)

    at = T0 + timedelta(hours=1)
    discount = await while_merging(
        pool, mall_id, survivor, absorbed, checkout(pool, mall_id, absorbed, at)
    )
    assert discount == 150
    await pay(pool, mall_id, absorbed, at, discount)  # matched to the discount it got
    (row,) = await cards_of(pool, mall_id)
    assert (row["card_id"], row["member_id"]) == (card.card_id, survivor)
    assert (row["purchases_made"], row["discount_given_fen"]) == (1, 150)


async def test_a_payment_naming_a_member_merged_before_waits_for_its_survivors_merge(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    first, second, last = member(), member(), member()
    offer = await make_offer(pool, mall_id)
    card = await accept(pool, offer, first, T0)
    await merge(pool, mall_id, second, first)  # the card is the second member's

    # The second member merges into the last while a payment still naming the first counts.
    late = await while_merging(
        pool, mall_id, last, second, pay(pool, mall_id, first, T0 + timedelta(hours=1))
    )

    (row,) = await cards_of(pool, mall_id)
    assert (row["card_id"], row["member_id"], row["purchases_made"]) == (card.card_id, last, 1)
    counted_on = await pool.fetchval(
        """SELECT card_id::text FROM commitment_purchases
            WHERE mall_id = $1 AND transaction_id = $2""",
        mall_id,
        late,
    )
    assert counted_on == card.card_id


async def refund(pool: asyncpg.Pool, mall_id: str, transaction_id: str, amount_fen: int) -> int:
    """member.refund.attributed of part of a payment (it names no member): how many counted
    purchases it took off their cards."""
    found = Refund(mall_id, f"5030{uuid.uuid4().hex[:24]}", transaction_id, amount_fen)
    async with pool.acquire() as conn, conn.transaction():
        return await commitment_purchases.refund_payments(conn, [(found, {})])


async def counted_on(pool: asyncpg.Pool, mall_id: str) -> list[tuple[str, str, int, bool]]:
    """(card, transaction, refunded, voided) of every purchase of the mall."""
    rows = await pool.fetch(
        """SELECT card_id::text AS card_id, transaction_id, refunded_fen,
                  voided_at IS NOT NULL AS voided
             FROM commitment_purchases WHERE mall_id = $1 ORDER BY paid_at""",
        mall_id,
    )
    return [(r["card_id"], r["transaction_id"], r["refunded_fen"], r["voided"]) for r in rows]


async def assert_sums_match_purchases(pool: asyncpg.Pool, mall_id: str) -> None:
    """Each card's progress and discounts given are those of the purchases still counting."""
    rows = await pool.fetch(
        """SELECT c.card_id, c.purchases_made, c.discount_given_fen,
                  count(p.*) FILTER (WHERE p.voided_at IS NULL) AS n,
                  COALESCE(sum(p.discount_fen) FILTER (WHERE p.voided_at IS NULL), 0) AS fen
             FROM commitment_cards c
             LEFT JOIN commitment_purchases p ON p.mall_id = c.mall_id AND p.card_id = c.card_id
            WHERE c.mall_id = $1
            GROUP BY c.card_id, c.purchases_made, c.discount_given_fen""",
        mall_id,
    )
    assert rows
    for r in rows:
        assert (r["purchases_made"], r["discount_given_fen"]) == (r["n"], r["fen"])


@pytest.mark.parametrize("when", ["before", "during", "after"])
async def test_a_purchase_refunded_around_a_fold_stops_counting_on_the_kept_card(
    pool: asyncpg.Pool, unique_id: str, when: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = member(), member()
    offer = await make_offer(pool, mall_id)
    await accept(pool, offer, absorbed, T0)
    ours = await accept(pool, offer, survivor, T0)
    theirs = await buy(pool, mall_id, absorbed, T0 + timedelta(hours=1))  # 350 paid, 150 off
    mine = await buy(pool, mall_id, survivor, T0 + timedelta(hours=2))

    # 150 of the absorbed member's purchase refunded (200 paid + 150 off no longer reaches
    # 400): before the merge, while its fold holds the purchase (the refund names no member,
    # so it waits on the purchase's row), or after it.
    if when == "before":
        assert await refund(pool, mall_id, theirs, 150) == 1
        await merge(pool, mall_id, survivor, absorbed)
    elif when == "during":
        taken = await while_merging(
            pool, mall_id, survivor, absorbed, refund(pool, mall_id, theirs, 150)
        )
        assert taken == 1, "the refund missed the purchase the fold moved"
    else:
        await merge(pool, mall_id, survivor, absorbed)
        assert await refund(pool, mall_id, theirs, 150) == 1

    (row,) = await cards_of(pool, mall_id)
    assert (row["card_id"], row["status"], row["purchases_made"], row["discount_given_fen"]) == (
        ours.card_id,
        "active",
        1,
        150,
    )
    assert await counted_on(pool, mall_id) == [
        (ours.card_id, theirs, 150, True),
        (ours.card_id, mine, 0, False),
    ]
    await assert_sums_match_purchases(pool, mall_id)
    # The survivor's next purchase is its second: the refunded one does not fulfil the card.
    await buy(pool, mall_id, survivor, T0 + timedelta(hours=3))
    (row,) = await cards_of(pool, mall_id)
    assert (row["status"], row["purchases_made"]) == ("active", 2)
    await assert_sums_match_purchases(pool, mall_id)


async def test_a_refund_while_a_fold_drops_a_payment_counted_on_both_reaches_the_kept_one(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = member(), member()
    offer = await make_offer(pool, mall_id)
    await accept(pool, offer, absorbed, T0)
    ours = await accept(pool, offer, survivor, T0)
    mine = await buy(pool, mall_id, survivor, T0 + timedelta(hours=1))
    # One 5-yuan payment counted on both cards (attributed to each member in turn).
    both = await pay(pool, mall_id, absorbed, T0 + timedelta(hours=2))
    payment = Payment(mall_id, survivor, "s1", both, 500, T0 + timedelta(hours=2))
    async with pool.acquire() as conn, conn.transaction():
        assert await commitment_purchases.count_payments(conn, [(payment, {})]) == 1

    # 200 refunded (300 paid, nothing off) while the fold drops the absorbed card's copy.
    taken = await while_merging(pool, mall_id, survivor, absorbed, refund(pool, mall_id, both, 200))

    assert taken == 1
    (row,) = await cards_of(pool, mall_id)
    assert (row["card_id"], row["status"], row["purchases_made"], row["discount_given_fen"]) == (
        ours.card_id,
        "active",
        1,
        150,
    )
    assert await counted_on(pool, mall_id) == [
        (ours.card_id, mine, 0, False),
        (ours.card_id, both, 200, True),
    ]
    await assert_sums_match_purchases(pool, mall_id)


async def test_the_merge_and_the_payments_arrive_over_jetstream(
    url: str, pool: asyncpg.Pool, nats_url: str, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = member(), member()
    offer = await make_offer(pool, mall_id)
    card = await accept(pool, offer, absorbed, T0)
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    nc = await nats.connect(nats_url)

    async def publish(subject: str, message: Any) -> None:
        await nc.jetstream().publish(
            subject, message.SerializeToString(), headers={"Nats-Msg-Id": message.event_id}
        )

    async def eventually(check: Callable[[], Awaitable[bool]]) -> bool:
        for _ in range(300):
            if await check():
                return True
            await asyncio.sleep(0.05)
        return False

    async def held_by_survivor() -> bool:
        return [r["member_id"] for r in await cards_of(pool, mall_id)] == [survivor]

    async def fulfilled() -> bool:
        return [r["status"] for r in await cards_of(pool, mall_id)] == ["fulfilled"]

    try:
        async with bootstrap(settings) as roles, running(roles, ("consume",)):
            merged = merged_event(mall_id, survivor, absorbed)
            await nc.jetstream().publish(
                IDENTITY_MERGED, merged.data, headers={"Nats-Msg-Id": merged.event_id}
            )
            assert await eventually(held_by_survivor)
            # Two payments of the survivor, and one attributed to the absorbed member before
            # the merge that comes after it.
            for i, payer in enumerate((survivor, survivor, absorbed)):
                await publish(
                    "member.payment.attributed",
                    member_events.PaymentAttributed(
                        event_id=str(uuid.uuid4()),
                        mall_id=mall_id,
                        member_id=payer,
                        tenant_id="coffee",
                        store_id="s1",
                        amount_fen=500,
                        transaction_id=f"4200{unique_id}{i}",
                        paid_at=timestamp(T0 + timedelta(days=1, hours=i)),
                    ),
                )
            assert await eventually(fulfilled)
    finally:
        await nc.close()
    (row,) = await cards_of(pool, mall_id)
    assert (row["card_id"], row["member_id"], row["purchases_made"]) == (card.card_id, survivor, 3)


# -- the card package mirror -----------------------------------------------------------------


async def flagged_stock(pool: asyncpg.Pool, mall_id: str) -> str:
    stock_id = f"stock-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn:
        await mirror_stocks.flag_stock(
            conn, mall_id, stock_id, {"out_request_no": f"{mall_id}/{stock_id}"}
        )
        await conn.execute(
            """UPDATE card_package_stocks SET state = 'created', platform_stock_id = $3
                WHERE mall_id = $1 AND stock_id = $2""",
            mall_id,
            stock_id,
            f"P{uuid.uuid4().int % 10**9}",
        )
    return stock_id


async def want(
    pool: asyncpg.Pool, mall_id: str, stock_id: str, coupon_id: str, member_id: str, wanted: str
) -> None:
    async with pool.acquire() as conn:
        await mirror.want(
            conn,
            [
                mirror.Wish(
                    mall_id,
                    coupon_id,
                    stock_id,
                    member_id,
                    f"code-{coupon_id}",
                    wanted,
                    T0 if wanted == "used" else None,
                )
            ],
        )


async def claimed(pool: asyncpg.Pool, mall_id: str) -> dict[str, tuple[str, str]]:
    """Claim the due mirrored coupons: the mall's, coupon → (wanted, openid called with)."""
    async with pool.acquire() as conn:
        claims = await mirror.claim_coupons(conn, 1000, 60)
        for c in claims:  # each call made: the platform holds what is wanted
            await mirror.save_coupon(conn, c, platform=c.wanted)
    return {c.coupon_id: (c.wanted, c.openid) for c in claims if c.mall_id == mall_id}


async def test_mirrored_coupons_move_with_the_identity_they_were_sent_to(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = member(), member()
    stock_id = await flagged_stock(pool, mall_id)
    async with pool.acquire() as conn:
        await mirror_stocks.put_payers(
            conn, [(mall_id, absorbed, APPID, "o-absorbed"), (mall_id, survivor, APPID, "o-ours")]
        )
    await want(pool, mall_id, stock_id, "sent-1", absorbed, "sent")
    await want(pool, mall_id, stock_id, "sent-2", absorbed, "sent")
    await want(pool, mall_id, stock_id, "ours-1", survivor, "sent")
    assert await claimed(pool, mall_id) == {
        "sent-1": ("sent", "o-absorbed"),
        "sent-2": ("sent", "o-absorbed"),
        "ours-1": ("sent", "o-ours"),
    }
    # sent-2 was sent before identities were pinned on the coupons (migration 0057).
    await pool.execute(
        """UPDATE card_package_coupons SET appid = '', openid = ''
            WHERE mall_id = $1 AND coupon_id = 'sent-2'""",
        mall_id,
    )
    await want(pool, mall_id, stock_id, "unsent", absorbed, "sent")  # claimed, not sent yet

    await merge(pool, mall_id, survivor, absorbed)

    rows = await pool.fetch(
        """SELECT coupon_id, member_id, platform FROM card_package_coupons
            WHERE mall_id = $1 ORDER BY coupon_id""",
        mall_id,
    )
    assert [(r["coupon_id"], r["member_id"], r["platform"]) for r in rows] == [
        ("ours-1", survivor, "sent"),
        ("sent-1", survivor, "sent"),
        ("sent-2", survivor, "sent"),
        ("unsent", survivor, "none"),
    ]
    # The coupons redeemed after the merge (the core names the survivor): each is used at the
    # platform under the openid that holds it; the one never sent goes to the survivor's
    # identity; nothing already sent is sent again.
    await want(pool, mall_id, stock_id, "sent-1", survivor, "used")
    await want(pool, mall_id, stock_id, "sent-2", survivor, "used")
    assert await claimed(pool, mall_id) == {
        "sent-1": ("used", "o-absorbed"),
        "sent-2": ("used", "o-absorbed"),
        "unsent": ("sent", "o-ours"),
    }
    # The survivor now pays under the absorbed member's WeChat identity: its own coupon, sent
    # before, is still used under the openid that holds it.
    async with pool.acquire() as conn:
        await mirror_stocks.put_payers(conn, [(mall_id, survivor, APPID, "o-absorbed")])
    await want(pool, mall_id, stock_id, "ours-1", survivor, "used")
    assert await claimed(pool, mall_id) == {"ours-1": ("used", "o-ours")}
    payers = await pool.fetch(
        """SELECT member_id, openid FROM card_package_payers WHERE mall_id = $1
            ORDER BY openid""",
        mall_id,
    )
    assert {r["member_id"]: r["openid"] for r in payers} == {
        absorbed: "o-absorbed",  # kept for coupon events still naming the absorbed member
        survivor: "o-absorbed",
    }


async def test_a_survivor_unknown_at_wechat_takes_the_absorbed_members_identity(
    pool: asyncpg.Pool, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    survivor, absorbed = member(), member()
    stock_id = await flagged_stock(pool, mall_id)
    async with pool.acquire() as conn:
        await mirror_stocks.put_payers(conn, [(mall_id, absorbed, APPID, "o-absorbed")])

    await merge(pool, mall_id, survivor, absorbed)

    # A coupon the survivor claims after the merge reaches its card package.
    await want(pool, mall_id, stock_id, "later", survivor, "sent")
    assert await claimed(pool, mall_id) == {"later": ("sent", "o-absorbed")}
