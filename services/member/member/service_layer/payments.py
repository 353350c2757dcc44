"""Attribute captured payments to members (支付即会员) and tell the rest of the mall."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from eventbus.outbox import OutgoingEvent, add_events
from kit.db import Connection
from kit.errors import NotFound

from member.adapters import events, merges, repository
from member.domain.model import Attribution, CapturedPayment, JoinChannel
from member.service_layer.pending import hold_unauthorised
from member.service_layer.refunds import release_parked_refunds
from member.service_layer.tiers import apply_spend


async def attribute_payments(
    conn: Connection,
    payments: Sequence[tuple[CapturedPayment, dict[str, str]]],
    now: datetime | None = None,
) -> list[Attribution]:
    """Inside the caller's transaction: join payers, record payments, queue events.

    Set-based: a batch costs a fixed handful of statements. An unknown mall or shop raises
    NotFound, a permanent refusal: the consumer isolates that message, dead-letters it, and
    ops replay it once the store is onboarded. In a mall that joins only authorised payers,
    a payer who is neither a member nor authorised is held as pending (no event) instead.
    """
    now = now or datetime.now(UTC)
    batch = [p for p, _ in payments]
    malls = await repository.malls_for_appids(conn, [p.appid for p in batch])
    for p in batch:
        if p.appid not in malls:
            raise NotFound("unknown_mall", f"no mall has appid {p.appid}")
    stores = await repository.find_stores(conn, [(malls[p.appid], p.shop_number) for p in batch])
    for p in batch:
        if (malls[p.appid], p.shop_number) not in stores:
            raise NotFound(
                "unknown_shop", f"mall {malls[p.appid]} has no store with shop {p.shop_number}"
            )
    payments = await hold_unauthorised(conn, malls, payments)
    batch = [p for p, _ in payments]
    if not batch:
        return []
    members = await repository.join_by_identities(
        conn, "openid", [(malls[p.appid], p.openid) for p in batch], JoinChannel.PAYMENT
    )
    members = await merges.follow_merges(conn, members)  # after a merge: the survivor
    attributions = [
        Attribution(
            payment=p,
            store=stores[(malls[p.appid], p.shop_number)],
            member=members[(malls[p.appid], p.openid)],
        )
        for p in batch
    ]
    await repository.lock_transactions(
        conn, [(a.store.mall_id, a.payment.transaction_id) for a in attributions]
    )  # before recording: a refund parking at this moment is seen below, or sees this
    new = await repository.record_payments(conn, attributions)
    fresh: list[tuple[Attribution, dict[str, str]]] = []
    for attribution, (_, headers) in zip(attributions, payments, strict=True):
        key = (attribution.store.mall_id, attribution.payment.transaction_id)
        if key not in new:
            continue  # attributed before, or earlier in this batch
        new.discard(key)
        fresh.append((attribution, headers))
    outgoing: list[OutgoingEvent] = []
    done: list[tuple[Attribution, dict[str, str]]] = []
    announced_joins: set[str] = set()
    for attribution, headers, tier_events in await apply_spend(conn, fresh, now):
        member = attribution.member
        if member.joined_now and member.member_id not in announced_joins:
            announced_joins.add(member.member_id)
            outgoing.append(events.member_joined(attribution, JoinChannel.PAYMENT, headers))
        outgoing += tier_events  # the attributed event carries the tier after this payment
        outgoing.append(events.payment_attributed(attribution, headers))
        done.append((attribution, headers))
    outgoing += await release_parked_refunds(conn, done)
    await add_events(conn, outgoing)
    return [a for a, _ in done]
