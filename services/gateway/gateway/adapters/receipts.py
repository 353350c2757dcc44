"""E-receipts (电子小票) and shopping guides for the signed-in shopper: member's payments and
guides, points' ledger entries of one payment, as plain data for the views.

Every call names the session's own member: a payment of another member is answered exactly
like one that does not exist (``receipt_not_found``), so nothing about it leaks.
"""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from kit.errors import NotFound
from mall.common.v1 import common_pb2
from mall.coupons.v1 import coupons_service_pb2
from mall.member.v1 import member_service_pb2
from mall.points.v1 import points_pb2, points_service_pb2

from gateway.adapters import parking
from gateway.adapters.coupons import coupon
from gateway.adapters.services import Backends, _reraise

#: Pages of the member's coupons (newest first) looked through for a payment's coupons.
COUPON_PAGES = 5

_SOURCES = {
    v: k.removeprefix("PAYMENT_SOURCE_").lower() for k, v in common_pb2.PaymentSource.items()
}


def _iso(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _payment(p: member_service_pb2.MemberPayment) -> dict[str, Any]:
    return {
        "transaction_id": p.transaction_id,
        "tenant_id": p.tenant_id,
        "store_id": p.store_id,
        "amount_fen": p.amount_fen,
        "refunded_fen": p.refunded_fen,
        "source": _SOURCES.get(p.source, "unspecified"),
        "paid_at": _iso(p.paid_at),
    }


def _guide(g: member_service_pb2.Guide) -> dict[str, Any]:
    return {
        "guide_id": g.guide_id,
        "name": g.name,
        "tenant_id": g.tenant_id,
        "store_id": g.store_id,
    }


async def receipts_page(
    b: Backends, mall_id: str, member_id: str, *, limit: int, cursor: str
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the member's payments, newest first, and the next page's cursor."""
    request = member_service_pb2.ListMemberPaymentsRequest(
        mall_id=mall_id,
        member_id=member_id,
        page=common_pb2.PageRequest(page_size=limit, page_token=cursor),
    )
    try:
        reply = await b.member.ListMemberPayments(request, timeout=b.timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _reraise(exc) from None
    return [_payment(p) for p in reply.payments], reply.page.next_page_token or None


async def _payment_of(b: Backends, mall_id: str, member_id: str, transaction_id: str) -> Any:
    request = member_service_pb2.ListMemberPaymentsRequest(
        mall_id=mall_id, member_id=member_id, transaction_id=transaction_id
    )
    try:
        reply = await b.member.ListMemberPayments(request, timeout=b.timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _reraise(exc) from None
    if not reply.payments:
        raise NotFound("receipt_not_found", "no such payment of this member")
    return reply.payments[0]


async def _points_of(
    b: Backends, mall_id: str, member_id: str, transaction_id: str
) -> dict[str, Any] | None:
    """Points the payment earned and what refunds took back; None when points did not
    answer (the receipt still shows)."""
    request = points_service_pb2.ListLedgerRequest(
        mall_id=mall_id,
        member_id=member_id,
        transaction_id=transaction_id,
        page=common_pb2.PageRequest(page_size=100),
    )
    try:
        reply = await b.points.ListLedger(request, timeout=b.timeout_s)
    except grpc.aio.AioRpcError:
        return None
    kinds = [(e.kind, e.points) for e in reply.entries]
    return {
        "earned": sum(p for k, p in kinds if k == points_pb2.LEDGER_ENTRY_KIND_CREDIT),
        "reversed": sum(abs(p) for k, p in kinds if k == points_pb2.LEDGER_ENTRY_KIND_REVERSAL),
        "credited": any(k == points_pb2.LEDGER_ENTRY_KIND_CREDIT for k, _ in kinds),
    }


async def store_guides(b: Backends, mall_id: str, store_id: str) -> list[dict[str, Any]] | None:
    """The store's guides (the "add your guide" offer); None when member did not answer."""
    request = member_service_pb2.ListStoreGuidesRequest(mall_id=mall_id, store_id=store_id)
    try:
        reply = await b.member.ListStoreGuides(request, timeout=b.timeout_s)
    except grpc.aio.AioRpcError:
        return None
    return [_guide(g) for g in reply.guides]


async def _coupons_of(
    coupons: Any,
    mall_id: str,
    member_id: str,
    payment: member_service_pb2.MemberPayment,
    timeout_s: float,
) -> list[dict[str, Any]] | None:
    """The coupons the payment issued (post-payment coupons name it): the member's coupons,
    newest first, down to the payment's time. None when coupons is not connected or failed."""
    if coupons is None:
        return None
    found: list[dict[str, Any]] = []
    token = ""
    for _ in range(COUPON_PAGES):
        request = coupons_service_pb2.ListMemberCouponsRequest(
            mall_id=mall_id,
            member_id=member_id,
            page=common_pb2.PageRequest(page_size=100, page_token=token),
        )
        try:
            reply = await coupons.ListMemberCoupons(request, timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return None
        found += [coupon(c) for c in reply.coupons if c.transaction_id == payment.transaction_id]
        token = reply.page.next_page_token
        paid_at = payment.paid_at.ToDatetime()
        if not token or (reply.coupons and reply.coupons[-1].claimed_at.ToDatetime() < paid_at):
            break
    return found


async def receipt(
    b: Backends, mall_id: str, member_id: str, transaction_id: str, *, coupons: Any = None
) -> dict[str, Any]:
    """One of the member's payments with what it brought: points, coupons (``coupons``: the
    CouponsService stub, None when not connected), the free parking time it added to its day
    (null when parking does not know it yet or did not answer) and its store's guides."""
    payment = await _payment_of(b, mall_id, member_id, transaction_id)
    points, guides, mine, issued, parking_benefit = await asyncio.gather(
        _points_of(b, mall_id, member_id, transaction_id),
        store_guides(b, mall_id, payment.store_id),
        member_guides(b, mall_id, member_id, quiet=True),
        _coupons_of(coupons, mall_id, member_id, payment, b.timeout_s),
        parking.payment_benefit(b.parking, mall_id, member_id, transaction_id, b.timeout_s),
    )
    bound = {g["guide_id"] for g in mine or ()}
    return {
        **_payment(payment),
        "points": points,
        "coupons_issued": issued,
        "parking_benefit": parking_benefit,
        "guides": None
        if guides is None
        else [{**g, "bound": g["guide_id"] in bound} for g in guides],
    }


async def member_guides(
    b: Backends, mall_id: str, member_id: str, *, quiet: bool = False
) -> list[dict[str, Any]] | None:
    """The member's guides, most recently bound first (None if ``quiet`` and member failed)."""
    request = member_service_pb2.ListMemberGuidesRequest(mall_id=mall_id, member_id=member_id)
    try:
        reply = await b.member.ListMemberGuides(request, timeout=b.timeout_s)
    except grpc.aio.AioRpcError as exc:
        if quiet:
            return None
        raise _reraise(exc) from None
    return [{**_guide(g.guide), "bound_at": _iso(g.bound_at)} for g in reply.guides]


async def bind_guide(b: Backends, mall_id: str, member_id: str, guide_id: str) -> dict[str, Any]:
    request = member_service_pb2.BindGuideRequest(
        mall_id=mall_id, member_id=member_id, guide_id=guide_id
    )
    try:
        reply = await b.member.BindGuide(request, timeout=b.timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _reraise(exc) from None
    return {
        **_guide(reply.guide),
        "bound_at": _iso(reply.bound_at),
        "previous_guide_id": reply.previous_guide_id or None,
    }
