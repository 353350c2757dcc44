"""Credit points for attributed payments (支付即积分), exactly once per payment."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.outbox import add_events
from kit.db import Connection

from points.adapters import events, lots, policies, repository, rules, wechat_sync
from points.domain.expiry import DEFAULT_EXPIRY, ExpiryPolicy, lot_points
from points.domain.model import (
    AttributedPayment,
    Credit,
    EarningPolicy,
    mall_day,
    plan_credits,
)
from points.domain.rules import RuleBook
from points.domain.wechat_sync import report_for


async def credit_payments(
    conn: Connection,
    payments: Sequence[tuple[AttributedPayment, dict[str, str]]],
    rule: EarningPolicy | None = None,
    expiry: ExpiryPolicy = DEFAULT_EXPIRY,
) -> list[Credit]:
    """Inside the caller's transaction: ledger entries, balances, events and the reports
    owed to WeChat Pay (积分同步, for payments made with it), or nothing.

    The whole batch costs a fixed handful of statements (set-based), not a few per payment:
    group commit is what lets one consumer keep up with a mall's peak. A payment credited
    before (through any event) is skipped; one that earns 0 points gets a 0-point entry and a
    ``credited`` event with 0, because the platform wants a "no points" report for it too.

    The malls' earning rules are read once per batch (``rule`` overrides them, for tests);
    each credit records the rule versions that produced it (``base@1+campaign@2``). Campaign
    budgets are locked (after the accounts) and spent here, and daily caps count the credits
    already in the ledger for the member's mall day, both in this transaction
    (``points.domain.rules`` says how rules combine).

    Each credit that gives points fills a lot expiring by its mall's expiry policy
    (``mall_policies.expiry_policy``, read once per batch; ``expiry`` for a mall without one),
    counted from when the payment was made; the part of a credit that settles a negative
    balance or a debt (``points.domain.debt``; settled first, with a 'debt_settlement' entry)
    fills none.
    """
    batch = [p for p, _ in payments]
    if rule is None:
        rule = RuleBook(await rules.rule_versions(conn, [p.mall_id for p in batch]))
    balances = await repository.lock_accounts(conn, [(p.mall_id, p.member_id) for p in batch])
    before = await repository.credited_transactions(
        conn, [(p.mall_id, p.transaction_id) for p in batch]
    )
    new = [p for p in batch if (p.mall_id, p.transaction_id) not in before]
    campaigns = [(p.mall_id, q.campaign_id) for p in new if (q := rule.quote(p)).budget]
    spent = await rules.lock_budgets(conn, campaigns)
    earned = await rules.earned_on_days(
        conn, [(p.mall_id, p.member_id, mall_day(p.paid_at)) for p in new]
    )
    debts = await policies.debts(conn, list(balances))
    credits = plan_credits(
        batch, balances, before, rule, budgets_spent=spent, earned_on_day=earned, debts=debts
    )
    granted: dict[tuple[str, str], int] = {}
    for c in credits:
        if c.campaign_id:
            key = (c.payment.mall_id, c.campaign_id)
            granted[key] = granted.get(key, 0) + c.campaign_points
    await rules.spend_budgets(conn, granted)
    await repository.append_credits(conn, credits)
    mall_expiry = {
        m: ExpiryPolicy.parse(text, expiry.time_zone)
        for m, text in (await policies.expiry_policies(conn, [p.mall_id for p in batch])).items()
    }
    await lots.add(
        conn,
        [
            lots.NewLot(
                c.payment.mall_id,
                c.payment.member_id,
                c.payment.transaction_id,
                n,
                mall_expiry.get(c.payment.mall_id, expiry).expires_at(c.payment.paid_at),
            )
            for c in credits
            if c.applied and (n := lot_points(c.points - c.settled, c.balance_after)) > 0
        ],
    )
    await add_events(
        conn,
        [
            events.points_credited(credit, headers)
            for credit, (_, headers) in zip(credits, payments, strict=True)
            if credit.applied
        ],
    )
    await wechat_sync.queue_reports(
        conn, [r for r in (report_for(c) for c in credits) if r is not None]
    )
    return credits
