"""The mini-program's API: log in, refresh, and the shopper's own card, points and code.

Every ``/v1/me`` view answers for ``request[SESSION]`` (set from the token by
``entrypoints.auth``): the mall and member come from the token, never from the request.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import Counter

from gateway.domain.card import Card
from gateway.entrypoints import schemas
from gateway.entrypoints.keys import BACKENDS, SESSION, SHOPPERS
from gateway.service_layer import sessions

CARD_READS = Counter(
    "mall_gateway_card_reads_total",
    "Member card reads by how they were answered: memory, stale (refresh under way), joined "
    "(a fan-out under way), fanout",
    ["outcome"],
)


def count_card_read(outcome: str) -> None:
    CARD_READS.labels(outcome).inc()


def render_card(card: Card) -> bytes:
    """The card's answer, built (and checked) by its schema once per fan-out."""
    built_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return schemas.Card.model_validate(card.as_json(built_at=built_at)).model_dump_json().encode()


def _logged_in(result: sessions.LoggedIn) -> web.Response:
    member = schemas.MemberSummary(**result.member.summary()) if result.member else None
    return schemas.answer(schemas.LoggedIn(**result.tokens.as_json(), member=member))


async def create_session(request: web.Request) -> web.Response:
    """``POST /v1/session {appid, code}``: the ``wx.login`` code → the gateway's tokens."""
    body = await schemas.body(request, schemas.CreateSessionBody)
    shoppers = request.app[SHOPPERS]
    result = await sessions.login(
        body.appid,
        body.code,
        malls=shoppers.malls,
        directory_ready=shoppers.directory_ready(),
        wechat=shoppers.wechat,
        members=request.app[BACKENDS],
        tokens=shoppers.tokens,
    )
    return _logged_in(result)


async def refresh_session(request: web.Request) -> web.Response:
    """``POST /v1/session/refresh {refresh_token}``: a new pair; the old refresh token is spent."""
    body = await schemas.body(request, schemas.RefreshSessionBody)
    shoppers = request.app[SHOPPERS]
    result = await sessions.refresh(
        body.refresh_token,
        tokens=shoppers.tokens,
        spent=shoppers.spent,
        members=request.app[BACKENDS],
    )
    return _logged_in(result)


async def me(request: web.Request) -> web.Response:
    """``GET /v1/me``: the shopper's member card."""
    member = await sessions.current_member(request[SESSION], request.app[BACKENDS])
    return schemas.answer(schemas.Member(**member.as_json()))


async def join(request: web.Request) -> web.Response:
    """``POST /v1/me/join {phone}``: become a member of the session's mall."""
    body = await schemas.body(request, schemas.JoinBody)
    member, created, tokens = await sessions.join(
        request[SESSION],
        body.phone,
        members=request.app[BACKENDS],
        tokens=request.app[SHOPPERS].tokens,
    )
    joined = schemas.Joined(
        member=schemas.Member(**member.as_json()), created=created, **tokens.as_json()
    )
    return schemas.answer(joined, status=201 if created else 200)


async def points(request: web.Request) -> web.Response:
    """``GET /v1/me/points[?page_size&page_token]``: balance and a page of the ledger."""
    q = schemas.query(request, schemas.PointsQuery)
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    summary = await backends.points_summary(
        session.mall_id, member_id, page_size=q.page_size, page_token=q.page_token
    )
    return schemas.answer(schemas.PointsSummary.model_validate(summary))


async def ledger(request: web.Request) -> web.Response:
    """``GET /v1/me/points/ledger[?cursor&limit]``: the ledger, newest first, by cursor."""
    q = schemas.query(request, schemas.LedgerQuery)
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    entries, next_cursor = await backends.ledger_page(
        session.mall_id, member_id, limit=q.limit, cursor=q.cursor
    )
    page = schemas.LedgerPage(
        entries=[schemas.LedgerEntry(**e) for e in entries], next_cursor=next_cursor
    )
    return schemas.answer(page, headers={"Cache-Control": "no-store"})


async def card(request: web.Request) -> web.Response:
    """``GET /v1/me/card``: tier, points, coupons and parking in one answer (see
    ``gateway.service_layer.card`` for how fresh it is)."""
    session, shoppers = request[SESSION], request.app[SHOPPERS]
    member_id = await sessions.member_id_of(session, request.app[BACKENDS])
    answer = await shoppers.cards.read(session.mall_id, member_id)
    return web.Response(
        body=answer.body, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


async def checkout_code(request: web.Request) -> web.Response:
    """``GET /v1/me/checkout-code``: a short-lived code the tenant POS scans."""
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    code = await backends.issue_checkout_code(session.mall_id, member_id)
    return schemas.answer(schemas.CheckoutCode(**code), headers={"Cache-Control": "no-store"})
