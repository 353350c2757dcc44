"""Credit points for attributed payments (支付即积分), exactly once per payment."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.outbox import add_events
from kit.db import Connection

from points.adapters import events, repository
from points.domain.model import AttributedPayment, BaseRate, Credit


async def credit_payments(
    conn: Connection,
    payments: Sequence[tuple[AttributedPayment, dict[str, str]]],
    rule: BaseRate | None = None,
) -> list[Credit]:
    """Inside the caller's transaction: ledger entry, balance and event, or nothing at all.

    A payment credited before (through any event) is skipped by the ledger's unique index;
    a payment that earns 0 points still yields a ``credited`` event with 0, because the
    platform wants a "no points" report for it too.
    """
    rule = rule or BaseRate()
    credits: list[Credit] = []
    for payment, headers in payments:
        points = rule.points_for(payment)
        balance = await repository.lock_account(conn, payment.mall_id, payment.member_id)
        applied = True
        if points > 0:
            applied = await repository.append_credit(
                conn,
                mall_id=payment.mall_id,
                member_id=payment.member_id,
                points=points,
                balance_after=balance + points,
                transaction_id=payment.transaction_id,
                description=f"payment {payment.transaction_id} at {payment.tenant_id}",
            )
        credit = Credit(
            payment=payment,
            points=points if applied else 0,
            balance_after=balance + points if applied else balance,
            rule_version=rule.version,
            applied=applied,
        )
        credits.append(credit)
        if applied:
            await add_events(conn, [events.points_credited(credit, headers)])
    return credits
