"""The reconciliation rules alone (points.domain.recon): no servers, evidence built here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from points.domain.recon import (
    Credit,
    Evidence,
    Kind,
    Payment,
    PlatformSync,
    Refund,
    Reversal,
    Stage,
    Sync,
    compare,
)

START = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
END = START + timedelta(hours=1)
INSIDE = START + timedelta(minutes=10)


def consistent(amounts: list[int], *, platform: bool = True) -> Evidence:
    """Evidence of payments that went through every side, all in order."""
    e = Evidence(
        platform_payments={} if platform else None,
        platform_refunds={} if platform else None,
    )
    for i, amount in enumerate(amounts):
        tx, member = f"tx-{i:04d}", f"m-{i % 3}"
        at = INSIDE + timedelta(seconds=i)
        if e.platform_payments is not None:
            e.platform_payments[tx] = Payment(tx, amount, at)
            e.platform_syncs[tx] = PlatformSync(True, amount // 100)
        e.captured[tx] = Payment(tx, amount, at + timedelta(milliseconds=5))
        e.attributed[tx] = Payment(tx, amount, at + timedelta(milliseconds=9), member_id=member)
        e.credits[tx] = [Credit(tx, member, amount // 100, at + timedelta(milliseconds=20))]
        e.syncs[(tx, "credit")] = Sync("SENT", amount // 100)
    return e


#: No per-example deadline: a loaded machine must not fail a rule test on time.
RELAXED = settings(deadline=None)


@RELAXED
@given(st.lists(st.integers(min_value=1, max_value=10**7), max_size=30))
def test_payments_that_went_through_every_side_have_no_difference(amounts: list[int]) -> None:
    assert compare(consistent(amounts), START, END) == []
    assert compare(consistent(amounts, platform=False), START, END) == []


@RELAXED
@given(
    st.lists(st.integers(min_value=1, max_value=10**7), min_size=1, max_size=30),
    st.data(),
)
def test_one_credit_taken_away_is_named_alone(amounts: list[int], data: st.DataObject) -> None:
    e = consistent(amounts)
    i = data.draw(st.integers(min_value=0, max_value=len(amounts) - 1))
    tx = f"tx-{i:04d}"
    del e.credits[tx]
    [found] = compare(e, START, END)
    assert (found.transaction_id, found.kind, found.stage) == (
        tx,
        Kind.MISSING_CREDIT,
        Stage.POINTS,
    )


def test_a_payment_first_seen_outside_the_window_is_not_judged() -> None:
    e = consistent([500])
    earlier = START - timedelta(minutes=1)
    e.platform_payments = {"tx-0000": Payment("tx-0000", 500, earlier)}
    del e.credits["tx-0000"]  # would be missing_credit if it belonged to the window
    assert compare(e, START, END) == []


def test_amounts_that_disagree_between_sides_are_wrong_amounts_with_both_values() -> None:
    e = consistent([1_000])
    e.attributed["tx-0000"] = Payment("tx-0000", 900, INSIDE, member_id="m-0")
    [found] = compare(e, START, END)
    assert (found.kind, found.stage, found.expected, found.actual) == (
        Kind.WRONG_AMOUNT,
        Stage.MEMBER,
        "1000 fen",
        "900 fen",
    )


def test_pos_payments_owe_the_platform_nothing() -> None:
    e = consistent([1_000], platform=False)
    e.captured.clear()
    e.attributed["tx-0000"] = Payment("tx-0000", 1_000, INSIDE, member_id="m-0", wechat=False)
    del e.syncs[("tx-0000", "credit")]
    assert compare(e, START, END) == []


def test_a_credit_no_stream_knows_of_is_unexpected() -> None:
    e = consistent([])
    e.credits["tx-ghost"] = [Credit("tx-ghost", "m-9", 7, INSIDE)]
    [found] = compare(e, START, END)
    assert (found.transaction_id, found.kind) == ("tx-ghost", Kind.UNEXPECTED_CREDIT)


def test_a_refund_without_reversal_or_sync_is_named_by_refund_id() -> None:
    e = consistent([2_000])
    e.platform_refunds = {"rf-1": Refund("rf-1", "tx-0000", 500, INSIDE)}
    e.captured_refunds["rf-1"] = Refund("rf-1", "tx-0000", 500, INSIDE)
    e.attributed_refunds["rf-1"] = Refund("rf-1", "tx-0000", 500, INSIDE)
    [missing] = compare(e, START, END)
    assert (missing.refund_id, missing.kind) == ("rf-1", Kind.MISSING_REVERSAL)
    e.reversals["rf-1"] = Reversal("rf-1", "tx-0000", 500, 5, INSIDE)
    [unsynced] = compare(e, START, END)
    assert (unsynced.refund_id, unsynced.kind, unsynced.actual) == ("rf-1", Kind.NOT_SYNCED, "none")
    e.syncs[("tx-0000", "reversal")] = Sync("SENT", 0)
    assert compare(e, START, END) == []
