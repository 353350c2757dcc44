"""Tenant POS reports of payments outside WeChat Pay: they enter the mall's payment path
here and leave the same ``member.payment.attributed`` event a WeChat Pay payment does."""

from __future__ import annotations

from datetime import UTC, datetime

from eventbus.outbox import add_events
from kit import context
from kit.db import Connection
from kit.errors import Conflict, InvalidInput, NotFound

from member.adapters import events, merges, repository
from member.domain.checkout import CheckoutPolicy
from member.domain.credentials import Principal
from member.domain.model import Attribution, PaymentSource, Store
from member.domain.pos import POS_SOURCES, reported_payment
from member.service_layer.credentials import authorize_store
from member.service_layer.tiers import apply_spend


async def report_payment(
    conn: Connection,
    caller: Principal,
    policy: CheckoutPolicy,
    *,
    mall_id: str,
    store_id: str,
    member_id: str,
    receipt_no: str,
    amount_fen: int,
    source: PaymentSource,
    paid_at: datetime,
) -> tuple[str, bool]:
    """Inside the caller's transaction: (transaction_id, duplicate). The same receipt again
    is the same payment: nothing new is recorded or published. A new one counts towards the
    member's tier like a WeChat Pay payment does."""
    now = datetime.now(UTC)
    if source not in POS_SOURCES:
        raise InvalidInput(
            "invalid_source", "source must be POS_CASH, POS_CARD, POS_OTHER or RECEIPT"
        )
    payment = reported_payment(
        store_id=store_id,
        receipt_no=receipt_no,
        amount_fen=amount_fen,
        paid_at=paid_at,
        now=now,
        skew_s=policy.clock_skew_s,
    )
    await authorize_store(conn, caller, mall_id, store_id)
    member = await repository.get_member(conn, mall_id, member_id)
    if member is None:
        raise NotFound("member_not_found", "no such member in this mall")
    member = (await merges.follow_merges(conn, {(mall_id, member_id): member}))[
        (mall_id, member_id)
    ]  # a POS holding a merged member's id pays the survivor
    attribution = Attribution(
        payment=payment,
        store=Store(
            mall_id,
            store_id,
            caller.tenant_id,
            await repository.tenant_category(conn, mall_id, caller.tenant_id),
        ),
        member=member,
        source=source,
    )
    if not await repository.record_payments(conn, [attribution]):
        recorded = await repository.recorded_payment(conn, mall_id, payment.transaction_id)
        assert recorded is not None
        if (recorded.member_id, recorded.amount_fen) != (member.member_id, amount_fen):
            raise Conflict(
                "receipt_conflict",
                f"receipt {receipt_no} was reported before with another member or amount",
            )
        return payment.transaction_id, True
    [(attribution, headers, tier_events)] = await apply_spend(
        conn, [(attribution, context.current())], now
    )
    await add_events(conn, [*tier_events, events.payment_attributed(attribution, headers)])
    return payment.transaction_id, False
