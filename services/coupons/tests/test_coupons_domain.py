"""The coupon rules without I/O: stock validation, discounts, where a coupon applies, who may
claim, post-payment rule matching and the sold-out memory."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from coupons.domain.claims import Channel, Claim, Outcome, judge, malformed, new_coupon_id
from coupons.domain.post_payment import Payment, Rule, claims_for
from coupons.domain.redemption import Held, Use, check, discount, usable_at
from coupons.domain.stocks import Kind, NewStock, Stock, Terms, validate
from coupons.service_layer.sold_out import SoldOutMemory
from hypothesis import given
from hypothesis import strategies as st
from kit.errors import AppError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
FIXED = Terms(kind=Kind.FIXED_AMOUNT, title="满100减20", discount_fen=2000, threshold_fen=10000)


def new_stock(**overrides: object) -> NewStock:
    base = NewStock(
        mall_id="m",
        tenant_id="coffee",
        terms=FIXED,
        max_coupons=10,
        claim_starts_at=NOW - timedelta(hours=1),
        claim_ends_at=NOW + timedelta(days=1),
        request_id="r",
        valid_days=7,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def stock(**overrides: object) -> Stock:
    s = new_stock()
    base = Stock(
        mall_id="m",
        stock_id="s",
        tenant_id="coffee",
        terms=FIXED,
        max_coupons=10,
        budget_fen=0,
        issuable=10,
        max_per_member=0,
        max_per_day=0,
        audience_tiers=(),
        audience_tags=(),
        claim_starts_at=s.claim_starts_at,
        claim_ends_at=s.claim_ends_at,
        valid_from=None,
        valid_until=None,
        valid_days=7,
        points_price=0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"terms": replace(FIXED, discount_fen=0)}, "invalid_discount"),
        ({"terms": replace(FIXED, threshold_fen=1000)}, "invalid_threshold"),
        (
            {"terms": Terms(kind=Kind.PERCENT_OFF, title="8折", percent_off=0)},
            "invalid_percent_off",
        ),
        ({"terms": Terms(kind=Kind.EXCHANGE, title="咖啡一杯")}, "invalid_description"),
        (
            {"terms": Terms(kind=Kind.PARKING, title="停车", parking_minutes=2000)},
            "invalid_parking_minutes",
        ),
        ({"terms": replace(FIXED, title="")}, "invalid_title"),
        ({"max_coupons": 0}, "invalid_max_coupons"),
        ({"budget_fen": 1999}, "invalid_budget"),
        ({"claim_ends_at": NOW - timedelta(hours=2)}, "invalid_claim_window"),
        ({"valid_days": 0}, "invalid_validity"),
        ({"valid_until": NOW + timedelta(days=3)}, "invalid_validity"),
        ({"terms": replace(FIXED, store_ids=("",))}, "invalid_scope"),
        ({"audience_tiers": ("",)}, "invalid_audience"),
        ({"request_id": ""}, "missing_field"),
    ],
)
def test_invalid_stocks_are_refused_with_their_own_code(
    overrides: dict[str, object], code: str
) -> None:
    with pytest.raises(AppError) as refused:
        validate(new_stock(**overrides))
    assert refused.value.code == code


def test_budget_caps_issuable_by_face_value() -> None:
    assert new_stock(budget_fen=7000).issuable() == 3
    capped = Terms(kind=Kind.PERCENT_OFF, title="9折", percent_off=10, max_discount_fen=500)
    assert validate(new_stock(terms=capped, budget_fen=2600)).issuable() == 5
    assert new_stock().issuable() == 10


@given(order=st.integers(0, 10**9), percent=st.integers(1, 99), cap=st.integers(0, 10**6))
def test_a_percentage_discount_never_passes_the_order_or_the_cap(
    order: int, percent: int, cap: int
) -> None:
    terms = Terms(kind=Kind.PERCENT_OFF, title="t", percent_off=percent, max_discount_fen=cap)
    off = discount(terms, order)
    assert 0 <= off <= order
    assert off == (min(order * percent // 100, cap) if cap else order * percent // 100)


@given(order=st.integers(0, 10**9), amount=st.integers(1, 10**6))
def test_a_fixed_discount_never_passes_the_order(order: int, amount: int) -> None:
    assert discount(replace(FIXED, discount_fen=amount), order) == min(amount, order)


def held(terms: Terms = FIXED, tenant_id: str = "coffee", status: str = "available") -> Held:
    return Held(
        mall_id="m",
        coupon_id="c",
        stock_id="s",
        tenant_id=tenant_id,
        member_id=str(uuid.uuid4()),
        status=status,
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=1),
        terms=terms,
    )


def test_where_a_coupon_applies() -> None:
    assert usable_at(held(), "any-coffee-store", "coffee")
    assert not usable_at(held(), "tea-1", "tea")
    assert usable_at(held(replace(FIXED, store_ids=("c1",))), "c1", "coffee")
    assert not usable_at(held(replace(FIXED, store_ids=("c1",))), "c2", "coffee")
    cross = held(replace(FIXED, tenant_ids=("coffee", "tea")), tenant_id="")
    assert usable_at(cross, "tea-1", "tea")
    assert not usable_at(cross, "cake-1", "cake")
    assert usable_at(held(tenant_id=""), "cake-1", "cake")  # a mall coupon: any store


@pytest.mark.parametrize(
    ("coupon", "store", "amount", "code"),
    [
        (held(), ("tea-1", "tea"), 20000, "coupon_not_usable_here"),
        (held(status="used"), ("c1", "coffee"), 20000, "coupon_used"),
        (held(status="revoked"), ("c1", "coffee"), 20000, "coupon_revoked"),
        (held(status="expired"), ("c1", "coffee"), 20000, "coupon_expired"),
        (replace(held(), valid_until=NOW), ("c1", "coffee"), 20000, "coupon_expired"),
        (
            replace(held(), valid_from=NOW + timedelta(seconds=1)),
            ("c1", "coffee"),
            20000,
            "coupon_not_yet_valid",
        ),
        (held(), ("c1", "coffee"), 9999, "below_threshold"),
    ],
)
def test_each_redemption_refusal(
    coupon: Held, store: tuple[str, str], amount: int, code: str
) -> None:
    use = Use("m", "c", store[0], store[1], "u1", amount)
    with pytest.raises(AppError) as refused:
        check(coupon, use, NOW)
    assert refused.value.code == code


def test_redemption_at_the_threshold_takes_the_discount() -> None:
    assert check(held(), Use("m", "c", "c1", "coffee", "u1", 10000), NOW) == 2000


def claim(**overrides: object) -> Claim:
    base = Claim("m", "s", str(uuid.uuid4()), "r")
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_who_may_claim_and_when() -> None:
    gold = stock(audience_tiers=("gold",), audience_tags=("vip", "mum"))
    assert judge(claim(tier_code="gold", tags=("mum",)), gold, NOW) is None
    refusals = [
        (claim(), None, "stock_not_found"),
        (claim(), stock(claim_starts_at=NOW + timedelta(seconds=1)), "claim_not_started"),
        (claim(), stock(claim_ends_at=NOW), "claim_ended"),
        (claim(), stock(paused=True), "stock_paused"),
        (claim(tier_code="silver", tags=("vip",)), gold, "tier_not_eligible"),
        (claim(tier_code="gold"), gold, "tag_not_eligible"),
        (claim(), stock(points_price=100), "points_required"),
        (claim(), stock(claimed=10), "stock_sold_out"),
    ]
    for c, s, reason in refusals:
        refusal = judge(c, s, NOW)
        assert refusal is not None
        assert refusal.reason == reason
    # A post-payment issue is the mall's own gift: no audience or points check.
    assert judge(claim(channel=Channel.POST_PAYMENT), replace(gold, points_price=5), NOW) is None


def test_malformed_claims() -> None:
    assert malformed(claim()) is None
    bad = [claim(member_id="x"), claim(request_id=""), claim(channel=Channel.POINTS)]
    assert [r.outcome for r in map(malformed, bad) if r] == [Outcome.INVALID] * 3


def test_coupon_codes_are_18_digits() -> None:
    codes = {new_coupon_id() for _ in range(1000)}
    assert len(codes) == 1000
    assert all(len(c) == 18 and c.isdigit() for c in codes)


def test_post_payment_rules_match_tenant_amount_and_window() -> None:
    rule = Rule("m", "r1", "s", "", 5000, (), NOW - timedelta(days=1), NOW + timedelta(days=1),
                True, stock_tenant="coffee")  # fmt: skip
    paid = Payment("m", str(uuid.uuid4()), "tx1", "coffee", "c1", 5000, NOW)
    assert rule.matches(paid)
    assert not rule.matches(replace(paid, amount_fen=4999))
    assert not rule.matches(replace(paid, tenant_id="tea"))
    assert not rule.matches(replace(paid, paid_at=NOW + timedelta(days=1)))
    assert not replace(rule, enabled=False).matches(paid)
    partner = replace(rule, tenant_ids=("tea",))
    assert partner.matches(replace(paid, tenant_id="tea"))
    assert not partner.matches(paid)
    (issued,) = claims_for(paid, [rule, partner])
    assert (issued.channel, issued.request_id) == (Channel.POST_PAYMENT, "post-payment:tx1:r1")


def test_sold_out_memory_forgets_after_its_ttl() -> None:
    clock = [0.0]
    memory = SoldOutMemory(ttl_s=5, clock=lambda: clock[0])
    memory.remember(("m", "s"), frozenset({("member", "r1")}))
    assert memory.known(("m", "s"))
    assert memory.holders(("m", "s")) == frozenset({("member", "r1")})
    clock[0] = 5.1
    assert not memory.known(("m", "s"))
    assert memory.holders(("m", "s")) is None
