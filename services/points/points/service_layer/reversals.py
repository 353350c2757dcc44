"""Reverse the points of refunded payments, in proportion, exactly once per refund."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.outbox import add_events
from kit.db import Connection
from kit.errors import Unavailable

from points.adapters import events, lots, policies, repository, wechat_sync
from points.domain.debt import split_debit
from points.domain.model import AttributedRefund, points_to_reverse
from points.domain.wechat_sync import reversal_report


async def reverse_refunds(
    conn: Connection, refunds: Sequence[tuple[AttributedRefund, dict[str, str]]]
) -> None:
    """Inside the caller's transaction: ledger entry, balance, event and the report owed to
    WeChat Pay, or nothing. When the points were spent, the balance goes below zero or, under
    the mall's 'debt' policy, stops at zero with the shortfall owed (``points.domain.debt``):
    the entry then shows what was taken, the event all the points reversed.

    member publishes a refund only after its payment, so a refund whose credit is missing
    here is early, not wrong: ``Unavailable`` makes the consumer retry it later.
    """
    for refund, headers in refunds:
        balances = await repository.lock_accounts(conn, [(refund.mall_id, refund.member_id)])
        balance = balances[(refund.mall_id, refund.member_id)]
        credited = await repository.credited_points(conn, refund.mall_id, refund.transaction_id)
        if credited is None:
            raise Unavailable(
                "credit_not_found", f"payment {refund.transaction_id} has no credit yet"
            )
        refunded_before, reversed_before = await repository.reversal_totals(
            conn, refund.mall_id, refund.transaction_id
        )
        points = points_to_reverse(
            credited=credited,
            pay_amount_fen=refund.pay_amount_fen,
            refunded_before_fen=refunded_before,
            reversed_before=reversed_before,
            refund_amount_fen=refund.refund_amount_fen,
        )
        if not await repository.record_reversal(conn, refund, points):
            continue  # this refund was handled before
        policy = (await policies.negative_balance(conn, [refund.mall_id]))[refund.mall_id]
        debit = split_debit(policy, balance, points)
        balance_after = balance - debit.taken
        if points:
            await repository.append_reversal(conn, refund, debit.taken, balance_after, debit.debt)
            await policies.add_debts(conn, {(refund.mall_id, refund.member_id): debit.debt})
            await lots.consume(conn, refund.mall_id, refund.member_id, points)
        await add_events(conn, [events.points_reversed(refund, points, balance_after, headers)])
        report = reversal_report(refund, reversed_before + points, balance_after)
        if report is not None:
            await wechat_sync.queue_reversal_report(conn, report)
