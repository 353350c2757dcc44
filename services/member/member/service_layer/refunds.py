"""Attribute refunds to the payments they take back, so every service can reverse its part.

A refund can arrive before its payment (the two notifications race): it is parked and
released the moment the payment is attributed, so the reversal always follows the credit.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from eventbus.outbox import OutgoingEvent, add_events
from kit.db import Connection
from kit.errors import InvalidInput, NotFound

from member.adapters import events, repository
from member.domain.model import Attribution, CapturedRefund, check_refund

log = structlog.get_logger(__name__)


async def attribute_refunds(
    conn: Connection, refunds: Sequence[tuple[CapturedRefund, dict[str, str]]]
) -> None:
    """Inside the caller's transaction. A refund of more than was paid is refused
    (``refund_exceeds_payment``, dead-lettered); a refund seen before is skipped."""
    malls = await repository.malls_for_appids(conn, [r.appid for r, _ in refunds])
    for refund, _ in refunds:
        if refund.appid not in malls:
            raise NotFound("unknown_mall", f"no mall has appid {refund.appid}")
    # Before looking for the payment: one attributed at this moment is then seen, or sees
    # this refund parked (see repository.lock_transactions).
    await repository.lock_transactions(
        conn, [(malls[r.appid], r.transaction_id) for r, _ in refunds]
    )
    outgoing: list[OutgoingEvent] = []
    for refund, headers in refunds:
        mall_id = malls[refund.appid]
        payment = await repository.recorded_payment(conn, mall_id, refund.transaction_id)
        if payment is None:
            if await repository.insert_refund(conn, mall_id, refund, "parked"):
                log.info("refund_parked", transaction_id=refund.transaction_id)
            continue
        check_refund(payment, refund.refund_amount_fen)
        if await repository.insert_refund(conn, mall_id, refund, "attributed"):
            outgoing.append(events.refund_attributed(payment, refund, headers))
    await add_events(conn, outgoing)


async def release_parked_refunds(
    conn: Connection, attributed: Sequence[tuple[Attribution, dict[str, str]]]
) -> list[OutgoingEvent]:
    """Refunds that were waiting for these payments, as events to follow theirs."""
    headers = {(a.store.mall_id, a.payment.transaction_id): h for a, h in attributed}
    outgoing: list[OutgoingEvent] = []
    for mall_id, refund in await repository.parked_refunds(conn, list(headers)):
        payment = await repository.recorded_payment(conn, mall_id, refund.transaction_id)
        assert payment is not None, "released with its payment"
        try:
            check_refund(payment, refund.refund_amount_fen)
        except InvalidInput as exc:
            # Stays parked for ops: the payment must not be refused for its refund's sake.
            log.error("parked_refund_refused", refund_id=refund.refund_id, error=exc.message)
            continue
        await repository.mark_refund_attributed(conn, mall_id, refund.refund_id)
        outgoing.append(
            events.refund_attributed(payment, refund, headers[(mall_id, refund.transaction_id)])
        )
    return outgoing
