"""Refunds of purchases counted on commitment cards (支付分先享卡), on real PostgreSQL: the
payments and refunds consumers run apart, so a refund may be handled before its payment or at
the same moment; either way the refunds of a payment add up, and the purchase stops counting
once what is left of it (plus its discount) is under the card's minimum."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg
import pytest
from coupons.adapters import commitment_repository as repo
from coupons.adapters.commitment_repository import CardRow
from coupons.bootstrap import MIGRATIONS
from coupons.domain.commitment import OfferTerms
from coupons.service_layer import commitment
from coupons.service_layer.commitment_purchases import (
    Payment,
    Refund,
    count_payments,
    refund_payments,
)
from kit.db import Connection
from kit.migrations import migrate
from mall_testing.locks import while_open
from mall_testing.plugin import FreshDatabase

APPID = "wx0commitmentrefund"
#: 3 purchases in 15 days at s1, 1.5 yuan off each order of 4 yuan or more.
TERMS = OfferTerms("15天3次，每次立减1.5元", ("s1",), 3, 15, 400, 150)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)
PAID_AT = T0 + timedelta(hours=1)

T = TypeVar("T")


@pytest.fixture(scope="module")
async def url(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("coupons")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture(scope="module")
async def pool(url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(url, min_size=2, max_size=6) as pool:
        yield pool


@pytest.fixture
async def card(pool: asyncpg.Pool, unique_id: str) -> CardRow:
    """A member's active card in a mall of its own."""
    mall_id, member_id = f"mall-{unique_id}", str(uuid.uuid4())
    async with pool.acquire() as conn:
        offer = await repo.create_offer(conn, mall_id, "coffee", str(uuid.uuid4()), TERMS)
        return await commitment.accept_card(
            conn, mall_id, offer.offer_id, member_id, APPID, f"o-{member_id[:8]}", T0
        )


def payment(card: CardRow, transaction_id: str, amount_fen: int) -> Payment:
    """member.payment.attributed at s1, no discount applied."""
    return Payment(card.mall_id, card.member_id, "s1", transaction_id, amount_fen, PAID_AT)


def refund(card: CardRow, transaction_id: str, amount_fen: int) -> Refund:
    """member.refund.attributed of part of a payment (it names no member)."""
    return Refund(card.mall_id, f"5030{uuid.uuid4().hex[:24]}", transaction_id, amount_fen)


def transaction() -> str:
    return f"4200{uuid.uuid4().int % 10**12:012d}"


async def count(pool: asyncpg.Pool, *payments: Payment) -> int:
    """One payments consumer batch: how many purchases counted."""
    async with pool.acquire() as conn, conn.transaction():
        return await count_payments(conn, [(p, {}) for p in payments])


async def take_back(pool: asyncpg.Pool, *refunds: Refund) -> int:
    """One refunds consumer batch: how many purchases stopped counting."""
    async with pool.acquire() as conn, conn.transaction():
        return await refund_payments(conn, [(r, {}) for r in refunds])


async def progress(pool: asyncpg.Pool, card: CardRow) -> tuple[int, int]:
    row = await pool.fetchrow(
        """SELECT purchases_made, discount_given_fen FROM commitment_cards
            WHERE mall_id = $1 AND card_id = $2::uuid""",
        card.mall_id,
        card.card_id,
    )
    assert row is not None
    return row["purchases_made"], row["discount_given_fen"]


async def purchases(pool: asyncpg.Pool, card: CardRow) -> list[tuple[str, int, bool]]:
    """(transaction, refunded, voided) of every purchase counted on the card."""
    rows = await pool.fetch(
        """SELECT transaction_id, refunded_fen, voided_at IS NOT NULL AS voided
             FROM commitment_purchases WHERE mall_id = $1 AND card_id = $2::uuid
            ORDER BY number""",
        card.mall_id,
        card.card_id,
    )
    return [(r["transaction_id"], r["refunded_fen"], r["voided"]) for r in rows]


async def test_refunds_before_and_after_the_payment_add_up(
    pool: asyncpg.Pool, card: CardRow
) -> None:
    paid = transaction()
    # 5 of a 10-yuan payment refunded before the payment reaches coupons: 5 left counts.
    assert await take_back(pool, refund(card, paid, 500)) == 0
    assert await count(pool, payment(card, paid, 1000)) == 1
    assert await purchases(pool, card) == [(paid, 500, False)]

    # 1 more: 4 left, still the minimum; then 3 more: 1 left, it no longer counts.
    assert await take_back(pool, refund(card, paid, 100)) == 0
    assert await progress(pool, card) == (1, 0)
    assert await take_back(pool, refund(card, paid, 300)) == 1
    assert await progress(pool, card) == (0, 0)
    assert await purchases(pool, card) == [(paid, 900, True)]


async def test_a_refund_handled_while_its_payment_counts_takes_the_purchase_off(
    pool: asyncpg.Pool, card: CardRow
) -> None:
    paid = transaction()

    async def counting(conn: Connection) -> None:
        assert await count_payments(conn, [(payment(card, paid, 500), {})]) == 1

    # 2 of 5 yuan refunded while the payment's count is not committed yet: 3 left is under
    # the minimum, so the refund waits for the purchase and takes it off.
    voided = await while_open(pool, counting, take_back(pool, refund(card, paid, 200)))

    assert voided == 1
    assert await progress(pool, card) == (0, 0)
    assert await purchases(pool, card) == [(paid, 200, True)]


@pytest.mark.parametrize(
    ("refunded", "counts"), [(200, False), (100, True)], ids=["voids", "leaves-enough"]
)
async def test_a_payment_counted_while_its_refund_is_recorded_counts_what_is_left(
    pool: asyncpg.Pool, card: CardRow, refunded: int, counts: bool
) -> None:
    paid = transaction()

    async def refunding(conn: Connection) -> None:
        # Before its payment: recorded, nothing to take off yet.
        assert await refund_payments(conn, [(refund(card, paid, refunded), {})]) == 0

    # The payment (in a batch with another payer's) counts as the refund commits: it waits
    # for the refund and counts by what is left of 5 yuan.
    other = Payment(card.mall_id, str(uuid.uuid4()), "s1", transaction(), 500, PAID_AT)
    counted = await while_open(pool, refunding, count(pool, other, payment(card, paid, 500)))

    assert counted == int(counts)
    assert await progress(pool, card) == (int(counts), 0)
    assert await purchases(pool, card) == ([(paid, refunded, False)] if counts else [])
