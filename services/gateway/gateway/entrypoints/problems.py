"""RFC 9457 problem+json errors with a stable ``code`` clients can match on."""

from __future__ import annotations

from aiohttp import web
from kit.errors import AppError, ErrorKind

STATUS = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.UNAVAILABLE: 503,
}

#: Codes whose status is not their error kind's: WeChat failing us is a bad gateway; a body
#: over the limit is the one refusal HTTP has its own status for.
STATUS_BY_CODE = {"wechat_unavailable": 502, "body_too_large": 413}


def problem(status: int, code: str, detail: str, **extra: str) -> web.Response:
    body = {
        "type": f"https://mallcircle.dev/problems/{code}",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
        # WeChat Pay reads `message` from a refusal; the problem fields serve everyone else.
        "message": detail,
        **extra,
    }
    return web.json_response(body, status=status, content_type="application/problem+json")


def from_error(error: AppError) -> web.Response:
    status = STATUS_BY_CODE.get(error.code, STATUS[error.kind])
    response = problem(status, error.code, error.message, **error.details)
    if status == 401:
        response.headers["WWW-Authenticate"] = f'Bearer error="{error.code}"'
    return response
