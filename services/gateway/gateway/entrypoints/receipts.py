"""``/v1/me/receipts`` (e-receipts, 电子小票) and ``/v1/me/guides`` (shopping guides) for the
session's member only: another member's payment is ``receipt_not_found`` like a made-up one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.adapters import receipts
from gateway.entrypoints import receipt_schemas as R
from gateway.entrypoints import schemas
from gateway.entrypoints.coupons import COUPONS
from gateway.entrypoints.keys import BACKENDS, SESSION, SHOPPERS
from gateway.service_layer import sessions


def _named(request: web.Request, mall_id: str, receipt: dict[str, Any]) -> dict[str, Any]:
    """The receipt with its store's name from the gateway's directory copy (no call)."""
    name = getattr(request.app[SHOPPERS].malls, "store_name", None)
    return {**receipt, "store_name": name(mall_id, receipt["store_id"]) if name else None}


async def list_receipts(request: web.Request) -> web.Response:
    """``GET /v1/me/receipts[?cursor&limit]``: the member's payments, newest first."""
    q = schemas.query(request, R.ReceiptsQuery)
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    page, next_cursor = await receipts.receipts_page(
        backends, session.mall_id, member_id, limit=q.limit, cursor=q.cursor
    )
    named = [_named(request, session.mall_id, r) for r in page]
    body = R.ReceiptPage.model_validate({"receipts": named, "next_cursor": next_cursor})
    return schemas.answer(body, headers={"Cache-Control": "no-store"})


async def get_receipt(request: web.Request) -> web.Response:
    """``GET /v1/me/receipts/{transaction_id}``: one payment and what it brought."""
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    coupons = request.app.get(COUPONS)
    detail = await receipts.receipt(
        backends,
        session.mall_id,
        member_id,
        request.match_info["transaction_id"],
        coupons=coupons.client.coupons if coupons is not None else None,
    )
    return schemas.answer(
        R.ReceiptDetail.model_validate(_named(request, session.mall_id, detail)),
        headers={"Cache-Control": "no-store"},
    )


async def list_guides(request: web.Request) -> web.Response:
    """``GET /v1/me/guides``: the member's shopping guides, one per tenant."""
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    found = await receipts.member_guides(backends, session.mall_id, member_id)
    return schemas.answer(R.Guides.model_validate({"guides": found or []}))


async def bind_guide(request: web.Request) -> web.Response:
    """``POST /v1/me/guides {guide_id}``: choose a guide of a store where the member paid."""
    body = await schemas.body(request, R.BindGuideBody)
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    bound = await receipts.bind_guide(backends, session.mall_id, member_id, body.guide_id)
    return schemas.answer(R.BoundGuide.model_validate(bound))
