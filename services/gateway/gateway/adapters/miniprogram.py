"""WeChat mini-program login: code-to-session (``/sns/jscode2session``) and the app secrets.

Secrets are settings: ``MINIPROGRAM_SECRETS_FILE`` names a JSON object ``{appid: AppSecret}``
of the mini-programs this gateway logs shoppers in for. ``WECHAT_API_BASE`` is
``https://api.weixin.qq.com`` in production and the WeChat simulator locally.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from kit.errors import Unauthenticated, Unavailable

from gateway.domain.shoppers import WechatIdentity

log = structlog.get_logger(__name__)

#: errcodes that mean "this code is no good" (invalid, already used, user blocked as risky).
_BAD_CODE = frozenset({40029, 40163, 40226})


def load_miniprogram_secrets(path: Path) -> dict[str, str]:
    """Read and check the file; ``ValueError`` says what is wrong, never a secret."""
    try:
        data: Any = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ValueError(f"{path}: not JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a JSON object {{appid: secret}} of non-empty strings")
    return dict(data)


def wechat_unavailable() -> Unavailable:
    return Unavailable("wechat_unavailable", "WeChat login is unavailable; retry shortly")


class WechatLogin:
    def __init__(
        self, http: aiohttp.ClientSession, *, base_url: str, secrets: Mapping[str, str]
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/sns/jscode2session"
        self._secrets = dict(secrets)

    def knows(self, appid: str) -> bool:
        return appid in self._secrets

    async def code_to_session(self, appid: str, code: str) -> WechatIdentity:
        params = {
            "appid": appid,
            "secret": self._secrets[appid],
            "js_code": code,
            "grant_type": "authorization_code",
        }
        try:
            async with self._http.get(self._url, params=params) as resp:
                status = resp.status
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("wechat_login_unreachable", error=repr(exc))
            raise wechat_unavailable() from None
        try:
            body: Any = json.loads(text)  # WeChat labels its JSON text/plain
        except ValueError:
            body = None
        if status != 200 or not isinstance(body, dict):
            log.warning("wechat_login_failed", status=status)
            raise wechat_unavailable()
        errcode = body.get("errcode") or 0
        if errcode in _BAD_CODE:
            raise Unauthenticated("invalid_login_code", "the login code is invalid or used")
        openid = body.get("openid")
        if errcode or not isinstance(openid, str) or not openid:
            # 40013/40125 (our appid or secret is wrong), -1 busy, 45011 rate limit ...
            log.warning("wechat_login_refused", errcode=errcode, errmsg=body.get("errmsg"))
            raise wechat_unavailable()
        unionid = body.get("unionid")
        return WechatIdentity(openid, unionid if isinstance(unionid, str) and unionid else None)
