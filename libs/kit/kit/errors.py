"""Errors with a stable code, raised by domain and service code, mapped at the edges.

Plain Python on purpose: the domain raises these without knowing about gRPC or HTTP; the
gRPC interceptor and the gateway translate ``kind`` into a status.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    UNAVAILABLE = "unavailable"


class AppError(Exception):
    """A refusal the caller can act on. ``code`` is stable: clients match on it."""

    kind = ErrorKind.INVALID

    def __init__(self, code: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class InvalidInput(AppError):
    kind = ErrorKind.INVALID


class NotFound(AppError):
    kind = ErrorKind.NOT_FOUND


class Conflict(AppError):
    kind = ErrorKind.CONFLICT


class Unauthenticated(AppError):
    kind = ErrorKind.UNAUTHENTICATED


class Forbidden(AppError):
    kind = ErrorKind.FORBIDDEN


class Unavailable(AppError):
    kind = ErrorKind.UNAVAILABLE
