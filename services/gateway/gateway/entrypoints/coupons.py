"""The shopper's coupons: the wallet, claims (by stock, coalesced; by code) and commitment
cards (支付分先享卡). The member, mall and openid come from the session token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from kit.errors import AppError, Unavailable
from prometheus_client import Counter

from gateway.adapters.coupons import CouponsClient
from gateway.domain.claims import ClaimRequest
from gateway.entrypoints import schemas
from gateway.entrypoints.keys import BACKENDS, SESSION
from gateway.service_layer import sessions
from gateway.service_layer.claims import Claims


@dataclass(frozen=True)
class CouponsApi:
    """What the coupon routes need: the coupons client, the claim coalescer, and the mall's
    mini-program appid (commitment cards are deducted under it)."""

    client: CouponsClient
    claims: Claims
    appid_for_mall: Callable[[str], str | None]


COUPONS = web.AppKey("coupons", CouponsApi)
NO_STORE = {"Cache-Control": "no-store"}
CLAIMS = Counter(
    "mall_gateway_coupon_claims_total",
    "Coupon claims by how they were answered: claimed, or the refusal's code (sold_out, ...)",
    ["outcome"],
)


def _api(request: web.Request) -> CouponsApi:
    api = request.app.get(COUPONS)
    if api is None:
        raise Unavailable("upstream_unavailable", "coupons are not connected to this gateway")
    return api


async def _member_id(request: web.Request) -> str:
    return await sessions.member_id_of(request[SESSION], request.app[BACKENDS])


async def list_coupons(request: web.Request) -> web.Response:
    """``GET /v1/me/coupons[?status&cursor&limit]``: the wallet, newest first."""
    q = schemas.query(request, schemas.CouponsQuery)
    api, mall_id = _api(request), request[SESSION].mall_id
    coupons, next_cursor = await api.client.wallet(
        mall_id,
        await _member_id(request),
        status=None if q.status == "all" else q.status,
        limit=q.limit,
        cursor=q.cursor,
    )
    page = schemas.CouponsPage(
        coupons=[schemas.Coupon.model_validate(c) for c in coupons], next_cursor=next_cursor
    )
    return schemas.answer(page, headers=NO_STORE)


async def claim_coupon(request: web.Request) -> web.Response:
    """``POST /v1/me/coupons/claims {stock_id, request_id}``: the coupon (201)."""
    body = await schemas.body(request, schemas.ClaimBody)
    api, mall_id = _api(request), request[SESSION].mall_id
    claim = ClaimRequest(mall_id, await _member_id(request), body.stock_id, body.request_id)
    try:
        coupon = await api.claims.claim(claim)
    except AppError as exc:
        CLAIMS.labels(exc.code).inc()
        raise
    CLAIMS.labels("claimed").inc()
    return schemas.answer(schemas.Coupon.model_validate(coupon), status=201)


async def claim_coupon_by_code(request: web.Request) -> web.Response:
    """``POST /v1/me/coupons/claims/by-code {code, request_id}``: the coupon (201)."""
    body = await schemas.body(request, schemas.ClaimByCodeBody)
    api, mall_id = _api(request), request[SESSION].mall_id
    member_id = await _member_id(request)
    tier, tags = await api.client.profile(mall_id, member_id)  # a code may name an audience
    claim = ClaimRequest(mall_id, member_id, "", body.request_id, tier, tags)
    coupon = await api.client.claim_by_code(claim, body.code)
    return schemas.answer(schemas.Coupon.model_validate(coupon), status=201)


async def accept_commitment_card(request: web.Request) -> web.Response:
    """``POST /v1/me/commitment-cards {offer_id}``: the card (the same one when accepted
    before)."""
    body = await schemas.body(request, schemas.AcceptCommitmentBody)
    api, session = _api(request), request[SESSION]
    appid = api.appid_for_mall(session.mall_id)
    if appid is None:
        raise Unavailable("directory_loading", "the gateway is starting; retry shortly")
    card = await api.client.accept_commitment(
        session.mall_id,
        await _member_id(request),
        body.offer_id,
        appid=appid,
        openid=session.openid,
    )
    return schemas.answer(schemas.CommitmentCard.model_validate(card), headers=NO_STORE)


async def list_commitment_cards(request: web.Request) -> web.Response:
    """``GET /v1/me/commitment-cards``: the member's cards, newest first."""
    api, mall_id = _api(request), request[SESSION].mall_id
    cards = await api.client.commitment_cards(mall_id, await _member_id(request))
    page = schemas.CommitmentCards(cards=[schemas.CommitmentCard.model_validate(c) for c in cards])
    return schemas.answer(page, headers=NO_STORE)
