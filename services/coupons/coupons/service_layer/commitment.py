"""Commitment card use cases: offer, accept, and the deadline sweep (fail + queue the clawback)
with its reminders. What counts on a card (checkout discounts, payments, refunds) is
``commitment_purchases``.

The sweep is safe on several replicas at once: a batch locks the cards it fails with SKIP
LOCKED and commits the failure, the clawback row and the event together, so each card fails
(and is clawed back, and announced) exactly once; the reminder stamps ``reminded_at`` the same
way. ``exclusive`` runs also take a transaction-level advisory lock so that replicas do not
even contend for rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from eventbus.outbox import add_events
from kit.db import Connection
from kit.errors import Forbidden, InvalidInput, NotFound

from coupons.adapters import commitment_clawbacks as clawbacks
from coupons.adapters import commitment_events as events
from coupons.adapters import commitment_repository as repo
from coupons.adapters.commitment_repository import CardRow, Offer
from coupons.domain.commitment import DEFAULT_REMINDER, OfferTerms, clawback_fen
from coupons.service_layer.offers import StoreTenant

DEFAULT_BATCH = 500
#: How long after its deadline a card is settled: a payment made before the deadline still
#: counts when it reaches coupons a little later (consumer lag, a redelivery, member's queue).
DEFAULT_SETTLE_GRACE = timedelta(minutes=30)
#: pg_try_advisory_xact_lock key of the periodic sweep: one replica works, the others skip.
SWEEP_LOCK = "coupons.commitment-sweep"


async def create_offer(
    conn: Connection,
    mall_id: str,
    tenant_id: str,
    request_id: str,
    terms: OfferTerms,
    store_tenant: StoreTenant,
) -> Offer:
    """A tenant's offer, at its own stores only (``store_tenant`` answers from the directory
    copy, so the check reads no table)."""
    if not request_id or len(request_id) > 128:
        raise InvalidInput("invalid_request_id", "request_id is 1..128 characters")
    for store_id in terms.store_ids:
        if store_tenant(mall_id, store_id) != tenant_id:
            raise Forbidden("store_not_yours", f"store {store_id} is not a store of this tenant")
    return await repo.create_offer(conn, mall_id, tenant_id, request_id, terms)


async def accept_card(
    conn: Connection,
    mall_id: str,
    offer_id: str,
    member_id: str,
    appid: str,
    openid: str,
    now: datetime,
) -> CardRow:
    if not appid or not openid:
        raise InvalidInput(
            "missing_payer", "appid and openid are required: a clawback is deducted from them"
        )
    offer = await repo.get_offer(conn, mall_id, offer_id)
    if offer is None:
        raise NotFound("offer_not_found", f"no offer {offer_id} in mall {mall_id}")
    card, _ = await repo.accept_card(conn, offer, member_id, appid, openid, now)
    return card


async def _locked(conn: Connection, exclusive: bool) -> bool:
    if not exclusive:
        return True
    return bool(
        await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", SWEEP_LOCK)
    )


async def fail_due(
    conn: Connection,
    now: datetime,
    limit: int = DEFAULT_BATCH,
    grace: timedelta = DEFAULT_SETTLE_GRACE,
) -> list[CardRow]:
    """One batch, in the caller's transaction: fail cards whose deadline passed ``grace``
    ago, queue the clawback of what each gave, announce each."""
    failed = await repo.fail_due(conn, now, now - grace, limit)
    out = []
    for row in failed:
        owed = clawback_fen(row.card)
        if owed > 0:
            await clawbacks.queue(
                conn,
                row.mall_id,
                row.card_id,
                row.member_id,
                row.appid,
                row.openid,
                owed,
                (row.card.accepted_at, row.card.deadline),
            )
        out.append(events.failed(row, owed))
    await add_events(conn, out)
    return failed


async def sweep(
    conn: Connection,
    now: datetime,
    *,
    remind_before: timedelta = DEFAULT_REMINDER,
    grace: timedelta = DEFAULT_SETTLE_GRACE,
    limit: int = DEFAULT_BATCH,
    exclusive: bool = False,
) -> tuple[int, int] | None:
    """Fail every card whose deadline passed ``grace`` before ``now``, then remind of the
    cards whose deadline is within ``remind_before``; ``(failed, reminded)``, or None when
    another replica holds the lock."""
    failed = reminded = 0
    while True:
        async with conn.transaction():
            if not await _locked(conn, exclusive):
                return None if not (failed or reminded) else (failed, reminded)
            batch = await fail_due(conn, now, limit, grace)
        failed += len(batch)
        if len(batch) < limit:
            break
    while True:
        async with conn.transaction():
            if not await _locked(conn, exclusive):
                return failed, reminded
            due = await repo.mark_reminders(conn, now, now + remind_before, limit)
            await add_events(conn, [events.expiring(row) for row in due])
        reminded += len(due)
        if len(due) < limit:
            return failed, reminded
