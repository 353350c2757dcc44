"""Refusals the way the platform words them, and a small reader for JSON request fields."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web

#: RFC 3339 date-time, the offset (``Z`` or ``±hh:mm``) required.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


class ApiError(Exception):
    """An answer other than success: ``{"code": ..., "message": ...}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return web.json_response({"code": self.code, "message": self.message}, status=self.status)


def param_error(message: str) -> ApiError:
    return ApiError(400, "PARAM_ERROR", message)


def parse_rfc3339(value: str) -> datetime | None:
    """The time, or None unless ``value`` is RFC 3339 with an offset."""
    if not _RFC3339.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


async def json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise param_error("the body is not JSON") from None
    if not isinstance(body, dict):
        raise param_error("the body must be a JSON object")
    return body


class Fields:
    """Typed reads of a JSON object; a wrong or missing field is a PARAM_ERROR naming it."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def _get(self, name: str, required: bool) -> Any:
        value = self._body.get(name)
        if value is None and required:
            raise param_error(f"{name} is required")
        return value

    def string(self, name: str, *, max_len: int = 128) -> str:
        value = self.optional_string(name, max_len=max_len)
        if value is None:
            raise param_error(f"{name} is required")
        return value

    def optional_string(self, name: str, *, max_len: int = 128) -> str | None:
        value = self._get(name, required=False)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise param_error(f"{name} must be a non-empty string")
        if len(value) > max_len:
            raise param_error(f"{name} is longer than {max_len} characters")
        return value

    def integer(self, name: str, *, minimum: int = 0) -> int:
        value = self.optional_integer(name, minimum=minimum)
        if value is None:
            raise param_error(f"{name} is required")
        return value

    def optional_integer(self, name: str, *, minimum: int = 0) -> int | None:
        value = self._get(name, required=False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise param_error(f"{name} must be an integer")
        if value < minimum:
            raise param_error(f"{name} must be at least {minimum}")
        return value

    def boolean(self, name: str) -> bool:
        value = self._get(name, required=True)
        if not isinstance(value, bool):
            raise param_error(f"{name} must be true or false")
        return value

    def optional_time(self, name: str) -> datetime | None:
        value = self.optional_string(name, max_len=32)
        if value is None:
            return None
        moment = parse_rfc3339(value)
        if moment is None:
            raise param_error(
                f"{name} must be RFC 3339 with an offset, e.g. 2026-11-26T10:00:00+08:00"
            )
        return moment

    def time(self, name: str) -> datetime:
        moment = self.optional_time(name)
        if moment is None:
            raise param_error(f"{name} is required")
        return moment
