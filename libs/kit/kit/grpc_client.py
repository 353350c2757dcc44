"""Client channels that forward the correlation context to the next service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from kit import context


class _ForwardContext(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = list(client_call_details.metadata or [])
        metadata.extend(context.current().items())
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            grpc.aio.Metadata(*metadata),
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def insecure_channel(target: str) -> grpc.aio.Channel:
    """A channel to another Mall Circle service inside the cluster (mTLS is the mesh's job)."""
    return grpc.aio.insecure_channel(target, interceptors=[_ForwardContext()])  # type: ignore[list-item]
