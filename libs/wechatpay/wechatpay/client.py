"""An async WeChat Pay API v3 client: signed requests, verified answers, smart-mall calls.

Every request carries the merchant's ``Authorization`` (:func:`wechatpay.signing.authorize`).
Every answer this client hands back was signed by a platform key it knows: the one named by
``Wechatpay-Serial`` (a certificate serial or a ``PUB_KEY_ID_…``; several are valid at once
while the platform rotates), over ``TIMESTAMP\\nNONCE\\nBODY\\n``, within the timestamp window
(the check notifications get too: :func:`wechatpay.notifications.verify_headers`). A 204
with an empty body is signed too. An answer that does not verify is not trusted, so the
call is *not known to have worked*: :class:`ResponseNotVerified`, a kind of
:class:`PlatformUnavailable`, which callers retry.

Errors: a verified 4xx other than 429 is :class:`PlatformRefused` (permanent: retrying the same
request gets the same answer); 5xx, 429, redirects, network errors and timeouts are
:class:`PlatformUnavailable` (transient). 5xx and 429 answers are not verified: load balancers
in front of the platform do not sign, and the answer is "retry" either way.

Constructing a client opens nothing; ``async with`` opens and closes its HTTP session.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from kit.errors import Unauthenticated
from yarl import URL

from wechatpay.notifications import SIGNATURE_TYPE, verify_headers
from wechatpay.signing import SCHEMA, PrivateKey, PublicKey, authorize

USER_AGENT = "mall-circle-wechatpay/0.1 (aiohttp)"
#: How far a response's ``Wechatpay-Timestamp`` may be from our clock. A signed answer is not
#: bound to the request it answers, so the window is what stops an old signed "204" from
#: being replayed as the answer to a new request.
MAX_CLOCK_SKEW_S = 300
_ERROR_TEXT_LIMIT = 500


class WeChatPayError(Exception):
    """Any failure of a call to the platform."""


class PlatformRefused(WeChatPayError):
    """The platform said no (a verified 4xx other than 429): the same request will fail again."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class PlatformUnavailable(WeChatPayError):
    """The call may or may not have reached the platform: retry it later."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ResponseNotVerified(PlatformUnavailable):
    """An answer without a valid platform signature: not trusted, so not known to be delivered."""


def _dumps(body: Mapping[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def rfc3339(moment: datetime) -> str:
    """``2026-11-26T10:00:00+08:00``: what the platform's time fields want (offset required)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("platform times carry an offset: pass an aware datetime")
    return moment.isoformat(timespec="seconds")


class WeChatPayClient:
    """One merchant's client of the platform's API v3 (one ``mchid``, its key and serial)."""

    def __init__(
        self,
        *,
        base_url: str,
        mchid: str,
        serial_no: str,
        private_key: PrivateKey,
        platform_keys: Mapping[str, PublicKey],
        timeout_s: float = 10.0,
        max_clock_skew_s: float = MAX_CLOCK_SKEW_S,
    ) -> None:
        if not platform_keys:
            raise ValueError("at least one platform public key is needed to verify answers")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(f"base_url must be http(s)://host[:port][/prefix]: {base_url!r}")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        #: A path prefix (a proxy or simulator mounted below /) is part of what is signed.
        self._prefix = parts.path.rstrip("/")
        self.mchid = mchid
        self._serial_no = serial_no
        self._private_key = private_key
        self._platform_keys = dict(platform_keys)
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_clock_skew_s = max_clock_skew_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WeChatPayClient:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, headers={"User-Agent": USER_AGENT}
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the signed exchange ----------------------------------------------------------------

    async def request(
        self, method: str, path: str, json_body: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        """Send a signed request; return ``(status, parsed JSON or None)`` of a verified 2xx.

        ``path`` is the API path with its query, already encoded (``/v3/...?appid=...``);
        it is signed and sent byte for byte as given.
        """
        if self._session is None:
            raise RuntimeError("use the client inside 'async with'")
        method = method.upper()
        body = "" if json_body is None else _dumps(json_body)
        signed_path = self._prefix + path
        auth = authorize(
            mchid=self.mchid,
            serial_no=self._serial_no,
            private_key=self._private_key,
            method=method,
            path=signed_path,
            body=body,
        )
        headers = {"Authorization": auth.header(), "Accept": "application/json"}
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method,
                URL(self._origin + signed_path, encoded=True),
                data=body.encode() if json_body is not None else None,
                headers=headers,
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.read()
                answer_headers = response.headers
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PlatformUnavailable(f"{method} {path}: {exc!r}") from exc

        if status == 429 or status >= 500:
            code, message = _error_fields(raw)
            raise PlatformUnavailable(
                f"{method} {path}: {status} {code}: {message}", status=status, code=code
            )
        text = self._verified_text(answer_headers, raw)
        if 200 <= status < 300:
            return status, _json_or_none(text, f"{method} {path}")
        if 400 <= status < 500:
            code, message = _error_fields(raw)
            raise PlatformRefused(status, code or f"HTTP_{status}", message)
        raise PlatformUnavailable(f"{method} {path}: unexpected status {status}", status=status)

    def _verified_text(self, headers: Mapping[str, str], raw: bytes) -> str:
        kind = headers.get(SIGNATURE_TYPE)
        if kind is not None and kind != SCHEMA:
            raise ResponseNotVerified(f"unsupported signature type {kind!r}", code="bad_signature")
        try:
            verify_headers(
                headers,
                raw,
                platform_keys=self._platform_keys,
                now=time.time(),
                max_skew_s=self._max_clock_skew_s,
            )
        except Unauthenticated as exc:
            raise ResponseNotVerified(f"{exc.code}: {exc.message}", code=exc.code) from None
        return raw.decode()

    # -- smart-mall calls ---------------------------------------------------------------------

    async def notify_points(
        self,
        *,
        appid: str,
        transaction_id: str,
        openid: str,
        earn_points: bool,
        increased_points: int,
        points_update_time: datetime,
        total_points: int | None = None,
        no_points_remarks: str | None = None,
        sub_mchid: str | None = None,
    ) -> None:
        """积分同步: tell the platform what a payment earned; ``earn_points=False`` too.

        Returns when the platform answered 204 (verified); raises otherwise.
        """
        if not earn_points and not no_points_remarks:
            raise ValueError("a no-points report says why: no_points_remarks is required")
        if earn_points and increased_points <= 0:
            raise ValueError("earn_points=True reports a positive increased_points")
        body: dict[str, Any] = {}
        if sub_mchid:
            body["sub_mchid"] = sub_mchid
        body |= {
            "transaction_id": transaction_id,
            "appid": appid,
            "openid": openid,
            "earn_points": earn_points,
            "increased_points": increased_points,
            "points_update_time": rfc3339(points_update_time),
        }
        if no_points_remarks:
            body["no_points_remarks"] = no_points_remarks
        if total_points is not None:
            body["total_points"] = total_points
        await self.request("POST", "/v3/businesscircle/points/notify", body)

    async def user_authorization(
        self, openid: str, appid: str, sub_mchid: str | None = None
    ) -> dict[str, Any]:
        """积分授权查询: the shopper's points authorisation, as the platform answered it.

        Rate-limited at the platform (about 150/s per merchant): cache what it says.
        """
        query = {"appid": appid} | ({"sub_mchid": sub_mchid} if sub_mchid else {})
        path = f"/v3/businesscircle/user-authorizations/{_segment(openid)}?{urlencode(query)}"
        return _object(await self.request("GET", path))

    async def points_commit_status(self, openid: str, brandid: str, appid: str) -> dict[str, Any]:
        """待积分状态查询: whether the shopper has a payment still waiting for points."""
        query = urlencode({"brandid": brandid, "appid": appid})
        path = f"/v3/businesscircle/users/{_segment(openid)}/points/commit_status?{query}"
        return _object(await self.request("GET", path))


def _segment(value: str) -> str:
    if not value:
        raise ValueError("an empty path segment")
    return quote(value, safe="")


def _error_fields(raw: bytes) -> tuple[str, str]:
    """``code`` and ``message`` of the platform's error body, whatever shape it came in."""
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "", raw[:_ERROR_TEXT_LIMIT].decode("utf-8", "replace")
    if not isinstance(parsed, dict):
        return "", str(parsed)[:_ERROR_TEXT_LIMIT]
    return str(parsed.get("code", "")), str(parsed.get("message", ""))[:_ERROR_TEXT_LIMIT]


def _json_or_none(text: str, what: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise PlatformUnavailable(f"{what}: the platform answered with malformed JSON") from None


def _object(answer: tuple[int, Any]) -> dict[str, Any]:
    _, body = answer
    if not isinstance(body, dict):
        raise PlatformUnavailable(f"expected a JSON object, got {type(body).__name__}")
    return body
