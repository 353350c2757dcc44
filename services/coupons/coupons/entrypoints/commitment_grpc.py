"""gRPC servicer of commitment cards (``mall.coupons.v1.CommitmentService``). Translation only.

Tenant RPCs (CreateCommitmentOffer, ApplyCommitmentDiscount) act for the tenant that the
server's authentication hook (``entrypoints.auth``) verified, in its own mall and at its own
stores (the directory copy says whose a store is). The gateway-facing RPCs stay open inside
the cluster, like member's and points'.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from kit.directory import Directory
from kit.errors import Forbidden, InvalidInput, NotFound
from kit.proto import timestamp
from mall.coupons.v1 import commitments_service_pb2 as pb
from mall.coupons.v1 import commitments_service_pb2_grpc as pb_grpc

from coupons.adapters import commitment_clawbacks as clawbacks
from coupons.adapters import commitment_repository as repo
from coupons.adapters.commitment_repository import CardRow, Offer
from coupons.domain.commitment import CardStatus, OfferTerms
from coupons.entrypoints.auth import Caller, tenant_caller
from coupons.service_layer import commitment, commitment_purchases

_STATUS = {
    CardStatus.ACTIVE: pb.COMMITMENT_CARD_STATUS_ACTIVE,
    CardStatus.FULFILLED: pb.COMMITMENT_CARD_STATUS_FULFILLED,
    CardStatus.FAILED: pb.COMMITMENT_CARD_STATUS_FAILED,
}
_CLAWBACK = {
    clawbacks.PENDING: pb.CLAWBACK_STATUS_PENDING,
    clawbacks.COLLECTED: pb.CLAWBACK_STATUS_COLLECTED,
    clawbacks.REFUSED: pb.CLAWBACK_STATUS_REFUSED,
}


def _uuid(value: str, name: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput(f"invalid_{name}", f"{name} must be a UUID") from None


def _required(**fields: str) -> None:
    for name, value in fields.items():
        if not value:
            raise InvalidInput("missing_field", f"{name} is required")


def _tenant(mall_id: str) -> Caller:
    """The verified tenant behind the call, which must be of the request's mall."""
    caller = tenant_caller()
    if mall_id != caller.mall_id:
        raise Forbidden("mall_not_yours", f"the credential is not for mall {mall_id}")
    return caller


def offer_message(offer: Offer) -> pb.CommitmentOffer:
    t = offer.terms
    return pb.CommitmentOffer(
        mall_id=offer.mall_id,
        offer_id=offer.offer_id,
        tenant_id=offer.tenant_id,
        title=t.title,
        store_ids=list(t.store_ids),
        purchases_required=t.purchases_required,
        window_days=t.window_days,
        min_amount_fen=t.min_amount_fen,
        discount_fen=t.discount_fen,
        created_at=timestamp(offer.created_at),
    )


def card_message(row: CardRow, claw: clawbacks.Clawback | None = None) -> pb.CommitmentCard:
    c = row.card
    message = pb.CommitmentCard(
        mall_id=row.mall_id,
        card_id=row.card_id,
        offer_id=row.offer_id,
        tenant_id=row.tenant_id,
        member_id=row.member_id,
        status=_STATUS[c.status],
        purchases_required=c.purchases_required,
        purchases_made=c.purchases_made,
        min_amount_fen=c.min_amount_fen,
        discount_fen=c.discount_fen,
        discount_given_fen=c.discount_given_fen,
        accepted_at=timestamp(c.accepted_at),
        deadline=timestamp(c.deadline),
        store_ids=list(c.store_ids),
    )
    if row.settled_at is not None:
        message.settled_at.CopyFrom(timestamp(row.settled_at))
    if claw is not None:
        message.clawback.CopyFrom(
            pb.Clawback(
                status=_CLAWBACK[claw.status],
                amount_fen=claw.amount_fen,
                attempts=claw.attempts,
                last_error_code=claw.last_error_code,
                last_error=claw.last_error,
                out_order_no=claw.out_order_no,
            )
        )
        if claw.collected_at is not None:
            message.clawback.collected_at.CopyFrom(timestamp(claw.collected_at))
    return message


class CommitmentServicer(pb_grpc.CommitmentServiceServicer):
    def __init__(self, pool: asyncpg.Pool, directory: Directory) -> None:
        self._pool = pool
        self._directory = directory

    async def CreateCommitmentOffer(
        self, request: pb.CreateCommitmentOfferRequest, context: Any
    ) -> pb.CreateCommitmentOfferResponse:
        o = request.offer
        _required(mall_id=o.mall_id, request_id=request.request_id)
        tenant = _tenant(o.mall_id)
        terms = OfferTerms(
            o.title,
            tuple(o.store_ids),
            o.purchases_required,
            o.window_days,
            o.min_amount_fen,
            o.discount_fen,
        )
        async with self._pool.acquire() as conn:
            offer = await commitment.create_offer(
                conn,
                o.mall_id,
                tenant.tenant_id,
                request.request_id,
                terms,
                self._directory.store_tenant,
            )
        return pb.CreateCommitmentOfferResponse(offer=offer_message(offer))

    async def AcceptCommitmentCard(
        self, request: pb.AcceptCommitmentCardRequest, context: Any
    ) -> pb.AcceptCommitmentCardResponse:
        _required(mall_id=request.mall_id, offer_id=request.offer_id)
        member_id = _uuid(request.member_id, "member_id")
        async with self._pool.acquire() as conn:
            card = await commitment.accept_card(
                conn,
                request.mall_id,
                request.offer_id,
                member_id,
                request.appid,
                request.openid,
                datetime.now(UTC),
            )
        return pb.AcceptCommitmentCardResponse(card=card_message(card))

    async def GetCommitmentCard(
        self, request: pb.GetCommitmentCardRequest, context: Any
    ) -> pb.GetCommitmentCardResponse:
        _required(mall_id=request.mall_id)
        card_id = _uuid(request.card_id, "card_id")
        async with self._pool.acquire() as conn:
            card = await repo.get_card(conn, request.mall_id, card_id)
            if card is None:
                raise NotFound("card_not_found", f"no card {card_id} in mall {request.mall_id}")
            claw = await clawbacks.get(conn, request.mall_id, card_id)
        return pb.GetCommitmentCardResponse(card=card_message(card, claw))

    async def ListMemberCommitmentCards(
        self, request: pb.ListMemberCommitmentCardsRequest, context: Any
    ) -> pb.ListMemberCommitmentCardsResponse:
        _required(mall_id=request.mall_id)
        member_id = _uuid(request.member_id, "member_id")
        async with self._pool.acquire() as conn:
            cards = await repo.member_cards(conn, request.mall_id, member_id)
        return pb.ListMemberCommitmentCardsResponse(cards=[card_message(c) for c in cards])

    async def ApplyCommitmentDiscount(
        self, request: pb.ApplyCommitmentDiscountRequest, context: Any
    ) -> pb.ApplyCommitmentDiscountResponse:
        _required(mall_id=request.mall_id, store_id=request.store_id)
        member_id = _uuid(request.member_id, "member_id")
        tenant = _tenant(request.mall_id)
        if self._directory.store_tenant(request.mall_id, request.store_id) != tenant.tenant_id:
            raise Forbidden(
                "store_not_yours", f"store {request.store_id} is not a store of this tenant"
            )
        async with self._pool.acquire() as conn:
            found = await commitment_purchases.apply_discount(
                conn,
                request.mall_id,
                member_id,
                request.store_id,
                request.order_amount_fen,
                request.request_id,
                datetime.now(UTC),
            )
        if found.card is None:
            return pb.ApplyCommitmentDiscountResponse()
        return pb.ApplyCommitmentDiscountResponse(
            discount_fen=found.discount_fen,
            card_id=found.card.card_id,
            purchases_made=found.card.card.purchases_made,
            purchases_required=found.card.card.purchases_required,
        )
