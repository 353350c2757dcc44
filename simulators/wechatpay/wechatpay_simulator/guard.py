"""The platform API's gate: every ``/v3/`` request must carry a valid merchant
``Authorization``, and every answer (errors included) is signed with the platform key.
"""

from __future__ import annotations

import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler
from wechatpay import signing

from wechatpay_simulator.config import Merchant, Settings
from wechatpay_simulator.fields import ApiError
from wechatpay_simulator.keys import MERCHANT, SETTINGS, STATE
from wechatpay_simulator.notifications import platform_headers

PLATFORM_PREFIX = "/v3/"


def _sign_error(message: str) -> ApiError:
    return ApiError(401, "SIGN_ERROR", message)


async def authenticate(
    request: web.Request, settings: Settings, merchant_of: dict[str, Merchant]
) -> Merchant:
    """The merchant whose key signed this request, or SIGN_ERROR saying what is wrong."""
    auth = signing.parse_authorization(request.headers.get("Authorization", ""))
    if auth is None:
        raise _sign_error(f"Authorization must be {signing.SCHEMA} with all five fields")
    merchant = merchant_of.get(auth.mchid)
    if merchant is None:
        raise _sign_error(f"mchid {auth.mchid} is not a merchant of this platform")
    if merchant.public_key is None:
        raise _sign_error(f"no public key is configured for merchant {auth.mchid}")
    if auth.serial_no != merchant.serial_no:
        raise _sign_error(f"serial_no {auth.serial_no} is not merchant {auth.mchid}'s certificate")
    try:
        timestamp = int(auth.timestamp)
    except ValueError:
        raise _sign_error("timestamp must be unix seconds") from None
    if abs(time.time() - timestamp) > settings.max_clock_skew_s:
        raise _sign_error("timestamp is too far from the platform's clock (request expired)")
    try:
        body = (await request.read()).decode()
    except UnicodeDecodeError:
        raise ApiError(400, "INVALID_REQUEST", "the body is not UTF-8") from None
    message = signing.request_message(
        request.method, request.raw_path, auth.timestamp, auth.nonce_str, body
    )
    if not signing.verify(merchant.public_key, message, auth.signature):
        raise _sign_error("the signature does not verify with the merchant's public key")
    return merchant


def sign_response(response: web.Response, settings: Settings) -> web.Response:
    body = response.body
    text = body.decode() if isinstance(body, bytes) else ""
    response.headers.update(platform_headers(settings, text))
    response.headers["Request-ID"] = str(uuid.uuid4())
    return response


@web.middleware
async def platform_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(PLATFORM_PREFIX):
        return await handler(request)
    settings = request.app[SETTINGS]
    try:
        request[MERCHANT] = await authenticate(request, settings, request.app[STATE].merchants)
        response = await handler(request)
    except ApiError as error:
        response = error.response()
    except web.HTTPException as exc:
        code = "NOT_FOUND" if exc.status == 404 else "INVALID_REQUEST"
        response = ApiError(exc.status, code, exc.reason).response()
    if not isinstance(response, web.Response):
        return response
    return sign_response(response, settings)


@web.middleware
async def control_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The control API answers refusals as ``{"code", "message"}`` too."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
