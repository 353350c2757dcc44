"""Mini-program login (``wx.login`` → code-to-session), as ``api.weixin.qq.com`` answers it.

``GET /sns/jscode2session?appid=&secret=&js_code=&grant_type=authorization_code`` exchanges a
login code for the shopper's openid (and unionid when the platform knows one). Like the real
API it answers HTTP 200 with a ``text/plain`` JSON body, refusals as ``{"errcode", "errmsg"}``.
A code works once and for ``login_code_ttl_s`` (5 minutes). Codes come from the control call
``POST /control/login-codes {appid, openid, unionid?}``: what ``wx.login`` gives the
mini-program on a phone.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

from aiohttp import web

from wechatpay_simulator.fields import Fields, json_object, param_error
from wechatpay_simulator.keys import SETTINGS, STATE
from wechatpay_simulator.state import LoginCode

#: The platform's own error codes for this API.
INVALID_CODE = (40029, "invalid code")
CODE_USED = (40163, "code been used")
INVALID_APPID = (40013, "invalid appid")
INVALID_SECRET = (40125, "invalid appsecret")
INVALID_GRANT = (40002, "invalid grant_type")


def _wechat(body: dict[str, Any], status: int = 200) -> web.Response:
    # api.weixin.qq.com labels these JSON bodies text/plain; clients must parse them anyway.
    return web.json_response(body, status=status, content_type="text/plain")


def _refused(error: tuple[int, str]) -> web.Response:
    return _wechat({"errcode": error[0], "errmsg": error[1]})


async def jscode2session(request: web.Request) -> web.Response:
    state, settings = request.app[STATE], request.app[SETTINGS]
    fault = state.take_fault("jscode2session")
    if fault is not None:
        return _wechat({"errcode": -1, "errmsg": "system error (injected fault)"}, fault.status)
    query = request.query
    if query.get("grant_type") != "authorization_code":
        return _refused(INVALID_GRANT)
    appid = query.get("appid", "")
    secret = settings.miniprogram_secrets().get(appid)
    if secret is None:
        return _refused(INVALID_APPID)
    if not hmac.compare_digest(query.get("secret", "").encode(), secret.encode()):
        return _refused(INVALID_SECRET)
    code = query.get("js_code", "")
    login = state.login_codes.get(code)
    if login is None or login.appid != appid or login.expires_at < time.monotonic():
        return _refused(INVALID_CODE)
    if code in state.used_login_codes:
        return _refused(CODE_USED)
    state.used_login_codes.add(code)
    answer = {"openid": login.openid, "session_key": secrets.token_urlsafe(18)}
    if login.unionid:
        answer["unionid"] = login.unionid
    return _wechat(answer)


async def create_login_code(request: web.Request) -> web.Response:
    """What ``wx.login`` returns on the shopper's phone: a code for this mini-program."""
    state, settings = request.app[STATE], request.app[SETTINGS]
    f = Fields(await json_object(request))
    appid = f.string("appid", max_len=64)
    openid = f.string("openid", max_len=128)
    unionid = f.optional_string("unionid", max_len=128)
    if appid not in settings.miniprogram_secrets():
        raise param_error(f"appid {appid} is not a mini-program of this platform")
    now = time.monotonic()
    # Forget codes that can no longer be exchanged, so a long benchmark stays small.
    for stale in [c for c, login in state.login_codes.items() if login.expires_at < now]:
        del state.login_codes[stale]
        state.used_login_codes.discard(stale)
    code = secrets.token_urlsafe(24)
    state.login_codes[code] = LoginCode(appid, openid, unionid, now + settings.login_code_ttl_s)
    return web.json_response({"code": code, "expires_in": int(settings.login_code_ttl_s)})
