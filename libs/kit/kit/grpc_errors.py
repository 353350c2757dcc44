"""Map AppError to a gRPC status with google.rpc details, and back on the client side."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from kit.errors import AppError, ErrorKind

ERROR_DOMAIN = "mallcircle"

_CODES: dict[ErrorKind, tuple[grpc.StatusCode, int]] = {
    ErrorKind.INVALID: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    ErrorKind.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    ErrorKind.CONFLICT: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    ErrorKind.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    ErrorKind.FORBIDDEN: (grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    ErrorKind.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
}
_KINDS = {grpc_code: kind for kind, (grpc_code, _) in _CODES.items()}


def rpc_code(error: AppError) -> int:
    """The google.rpc.Code number of the status ``error`` maps to (for an answer that reports a
    refusal inside a message, e.g. one item of a stream, instead of ending the call)."""
    return _CODES[error.kind][1]


def to_status(error: AppError) -> grpc.Status:
    """A rich status: ErrorInfo.reason carries the stable error code."""
    _, rpc_code = _CODES[error.kind]
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.code, domain=ERROR_DOMAIN, metadata=dict(error.details)
        )
    )
    status = status_pb2.Status(code=rpc_code, message=error.message, details=[info])
    return rpc_status.to_status(status)


def from_rpc_error(exc: grpc.aio.AioRpcError) -> AppError | None:
    """Rebuild the AppError a server raised, for callers such as the gateway; None when the
    status carries no stable code."""
    kind = _KINDS.get(exc.code())
    if kind is None:
        return None
    code: str | None = None
    details: dict[str, str] = {}
    metadata: Any = exc.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    code, details = info.reason, dict(info.metadata)
    if code is None:
        return None  # not one of ours (e.g. the channel could not connect)
    error = AppError(code, exc.details() or "", **details)
    error.kind = kind
    return error
