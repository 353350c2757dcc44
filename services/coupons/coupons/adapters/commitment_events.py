"""Commitment card events: contract messages built from rows, subjects in one place."""

from __future__ import annotations

import uuid

from eventbus.outbox import OutgoingEvent, event
from kit.proto import timestamp
from mall.coupons.v1 import events_pb2

from coupons.adapters.commitment_clawbacks import Clawback
from coupons.adapters.commitment_repository import CardRow

PROGRESSED = "coupons.commitment.progressed"
EXPIRING = "coupons.commitment.expiring"
FULFILLED = "coupons.commitment.fulfilled"
FAILED = "coupons.commitment.failed"
CLAWED_BACK = "coupons.commitment.clawed_back"


def _id(*parts: str) -> str:
    """A stable event id, so a repeated effect could never publish twice."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(("coupons.commitment", *parts))))


def progressed(
    row: CardRow,
    transaction_id: str,
    made: int,
    discount_fen: int,
    headers: dict[str, str] | None = None,
    *,
    refund_id: str = "",
) -> OutgoingEvent:
    """A purchase counted, or (``refund_id``) a counted one refunded."""
    message = events_pb2.CommitmentProgressed(
        card_id=row.card_id,
        member_id=row.member_id,
        tenant_id=row.tenant_id,
        transaction_id=transaction_id,
        purchases_made=made,
        purchases_required=row.card.purchases_required,
        discount_fen=discount_fen,
        deadline=timestamp(row.card.deadline),
    )
    return event(
        PROGRESSED,
        message,
        mall_id=row.mall_id,
        event_id=_id(row.mall_id, row.card_id, "progressed", transaction_id, refund_id),
        headers=headers,
    )


def fulfilled(row: CardRow, given_fen: int, headers: dict[str, str] | None = None) -> OutgoingEvent:
    message = events_pb2.CommitmentFulfilled(
        card_id=row.card_id,
        member_id=row.member_id,
        tenant_id=row.tenant_id,
        discount_given_fen=given_fen,
    )
    return event(
        FULFILLED,
        message,
        mall_id=row.mall_id,
        event_id=_id(row.mall_id, row.card_id, "fulfilled"),
        headers=headers,
    )


def expiring(row: CardRow) -> OutgoingEvent:
    c = row.card
    message = events_pb2.CommitmentExpiring(
        card_id=row.card_id,
        member_id=row.member_id,
        purchases_made=c.purchases_made,
        purchases_required=c.purchases_required,
        deadline=timestamp(c.deadline),
        discount_given_fen=c.discount_given_fen,
    )
    return event(
        EXPIRING, message, mall_id=row.mall_id, event_id=_id(row.mall_id, row.card_id, "expiring")
    )


def failed(row: CardRow, clawback_fen: int) -> OutgoingEvent:
    c = row.card
    message = events_pb2.CommitmentFailed(
        card_id=row.card_id,
        member_id=row.member_id,
        tenant_id=row.tenant_id,
        purchases_made=c.purchases_made,
        purchases_required=c.purchases_required,
        clawback_fen=clawback_fen,
    )
    return event(
        FAILED, message, mall_id=row.mall_id, event_id=_id(row.mall_id, row.card_id, "failed")
    )


def clawed_back(claim: Clawback) -> OutgoingEvent:
    message = events_pb2.CommitmentClawedBack(
        card_id=claim.card_id,
        member_id=claim.member_id,
        amount_fen=claim.amount_fen,
        out_order_no=claim.out_order_no,
    )
    return event(
        CLAWED_BACK,
        message,
        mall_id=claim.mall_id,
        event_id=_id(claim.mall_id, claim.card_id, "clawed_back"),
        headers={},
    )
