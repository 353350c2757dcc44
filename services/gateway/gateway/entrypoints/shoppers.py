"""The mini-program's API: log in, refresh, and the shopper's own card, points and code.

Every ``/v1/me`` view answers for ``request[SESSION]`` (set from the token by
``entrypoints.auth``): the mall and member come from the token, never from the request.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from kit.errors import InvalidInput

from gateway.entrypoints.keys import BACKENDS, SESSION, SHOPPERS
from gateway.service_layer import sessions

_APPID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PHONE = re.compile(r"\+?[0-9]{6,15}")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body: Any = await request.json()
    except ValueError:
        raise InvalidInput("invalid_json", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidInput("invalid_json", "the body must be a JSON object")
    return body


def _string(body: dict[str, Any], name: str, *, max_len: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidInput(f"invalid_{name}", f"{name} must be a string of 1-{max_len} characters")
    return value


def _logged_in(result: sessions.LoggedIn) -> web.Response:
    member = result.member.summary() if result.member else None
    return web.json_response({**result.tokens.as_json(), "member": member})


async def create_session(request: web.Request) -> web.Response:
    """``POST /v1/session {appid, code}``: the ``wx.login`` code → the gateway's tokens."""
    body = await _body(request)
    appid = _string(body, "appid", max_len=64)
    if not _APPID.fullmatch(appid):
        raise InvalidInput("invalid_appid", "appid is letters, digits, - and _")
    code = _string(body, "code", max_len=256)
    shoppers = request.app[SHOPPERS]
    result = await sessions.login(
        appid,
        code,
        malls=shoppers.malls,
        directory_ready=shoppers.directory_ready(),
        wechat=shoppers.wechat,
        members=request.app[BACKENDS],
        tokens=shoppers.tokens,
    )
    return _logged_in(result)


async def refresh_session(request: web.Request) -> web.Response:
    """``POST /v1/session/refresh {refresh_token}``: a new pair; the old refresh token is spent."""
    body = await _body(request)
    token = _string(body, "refresh_token", max_len=4096)
    shoppers = request.app[SHOPPERS]
    result = await sessions.refresh(
        token, tokens=shoppers.tokens, spent=shoppers.spent, members=request.app[BACKENDS]
    )
    return _logged_in(result)


async def me(request: web.Request) -> web.Response:
    """``GET /v1/me``: the shopper's member card."""
    member = await sessions.current_member(request[SESSION], request.app[BACKENDS])
    return web.json_response(member.as_json())


async def join(request: web.Request) -> web.Response:
    """``POST /v1/me/join {phone}``: become a member of the session's mall."""
    body = await _body(request)
    phone = _string(body, "phone", max_len=16)
    if not _PHONE.fullmatch(phone):
        raise InvalidInput("invalid_phone", "phone is a number in E.164 form")
    member, created, tokens = await sessions.join(
        request[SESSION],
        phone,
        members=request.app[BACKENDS],
        tokens=request.app[SHOPPERS].tokens,
    )
    return web.json_response(
        {"member": member.as_json(), "created": created, **tokens.as_json()},
        status=201 if created else 200,
    )


async def points(request: web.Request) -> web.Response:
    """``GET /v1/me/points[?page_size&page_token]``: balance and a page of the ledger."""
    try:
        page_size = int(request.query.get("page_size", "20"))
    except ValueError:
        raise InvalidInput("invalid_page_size", "page_size must be a number") from None
    if not 1 <= page_size <= 100:
        raise InvalidInput("invalid_page_size", "page_size is 1 to 100")
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    summary = await backends.points_summary(
        session.mall_id,
        member_id,
        page_size=page_size,
        page_token=request.query.get("page_token", ""),
    )
    return web.json_response(summary)


async def checkout_code(request: web.Request) -> web.Response:
    """``GET /v1/me/checkout-code``: a short-lived code the tenant POS scans."""
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    code = await backends.issue_checkout_code(session.mall_id, member_id)
    return web.json_response(code, headers={"Cache-Control": "no-store"})
