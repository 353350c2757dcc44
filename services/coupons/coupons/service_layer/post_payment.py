"""Post-payment coupons: issue after qualifying payments, take back (or give back) after refunds.

Both run inside the batched inbox consumer's transaction: one transaction per fetched batch.
A refund can arrive before its payment: it is recorded, and the payment then issues nothing.

A coupon used on an order comes back (usable again while still valid, coupons.coupon.returned)
when the order is refunded in full, or when partial refunds take it below the coupon's
threshold: the order amount the POS reported with the coupon, less every refund of that
payment, is under ``threshold_fen`` (满100减10 used on a 120-yuan order comes back once 20.01
yuan or more are refunded). A coupon without a threshold comes back on a full refund only. The
refund amounts are taken as the POS / WeChat Pay decided them: coupons does not claw back the
discount a partial refund keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from eventbus.outbox import OutgoingEvent, add_events
from kit.db import Connection

from coupons.adapters import coupons as coupons_sql
from coupons.adapters import events, refund_returns
from coupons.adapters import rules as rules_sql
from coupons.domain.claims import Claim, Outcome
from coupons.domain.post_payment import Payment, Refund, claims_for
from coupons.service_layer.claims import claim_batch

log = structlog.get_logger(__name__)


async def issue_for_payments(
    conn: Connection, payments: Sequence[tuple[Payment, dict[str, str]]]
) -> int:
    """Issue the coupons the payments earned; the number issued now."""
    if not payments:
        return 0
    rules = await rules_sql.rules_for(conn, [p.mall_id for p, _ in payments])
    if not rules:
        return 0
    refunded = await rules_sql.refunded_payments(
        conn, [(p.mall_id, p.transaction_id) for p, _ in payments]
    )
    claims: list[Claim] = []
    headers: list[dict[str, str]] = []
    for payment, cause in payments:
        if (payment.mall_id, payment.transaction_id) in refunded:
            continue
        for claim in claims_for(payment, rules):
            claims.append(claim)
            headers.append(cause)
    if not claims:
        return 0
    results = await claim_batch(conn, claims, headers=headers)
    issued = 0
    for claim, result in zip(claims, results, strict=True):
        if result.outcome is Outcome.CLAIMED:
            issued += 1
        else:
            log.info(
                "post_payment_coupon_not_issued",
                mall_id=claim.mall_id,
                rule_id=claim.rule_id,
                transaction_id=claim.transaction_id,
                reason=result.reason,
            )
    return issued


async def undo_for_refunds(
    conn: Connection, refunds: Sequence[tuple[Refund, dict[str, str]]], now: datetime | None = None
) -> None:
    """Any refund revokes the unused coupons its payment earned; a full refund (refunds adding
    up to the payment), or partial ones taking the order below a used coupon's threshold, give
    back a coupon used on that order while it is still valid."""
    if not refunds:
        return
    now = now or datetime.now(UTC)
    full = await rules_sql.record_refunds(conn, [r for r, _ in refunds])
    by_payment = {(r.mall_id, r.transaction_id): (r, cause) for r, cause in refunds}
    outgoing: list[OutgoingEvent] = []
    for c in await coupons_sql.revoke_unused_from_payments(
        conn, list(by_payment), now, "payment_refunded"
    ):
        refund, cause = by_payment[(c.mall_id, c.transaction_id)]
        outgoing.append(
            events.coupon_revoked(
                c.mall_id,
                c.coupon_id,
                c.stock_id,
                c.member_id,
                refund_id=refund.refund_id,
                transaction_id=c.transaction_id,
                headers=cause,
            )
        )
    returned = await coupons_sql.return_used_on_orders(
        conn, [k for k in by_payment if k in full], now
    )
    returned += await refund_returns.return_used_below_threshold(
        conn, [k for k in by_payment if k not in full], now
    )
    for c in returned:
        refund, cause = by_payment[(c.mall_id, c.transaction_id)]
        outgoing.append(
            events.coupon_returned(
                c.mall_id,
                c.coupon_id,
                c.stock_id,
                c.member_id,
                refund_id=refund.refund_id,
                transaction_id=c.transaction_id,
                headers=cause,
            )
        )
    await add_events(conn, outgoing)
