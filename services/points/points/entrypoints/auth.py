"""Who may call points' gRPC APIs: the server's ``authenticate`` hook.

PointsService is the gateway's and parking's (balances, ledger, holds), open to the callers
the network policy admits to the main port, except AdjustPoints (points by hand), an ops
call: taken only on the admin port (ADMIN_GRPC_PORT, reached by port-forward;
``kit.grpc_server.ops_allowed``), or on the one port when there is no admin port (dev,
tests). PointsAdminService and ReconciliationService are served on the admin port alone when
there is one.
"""

from __future__ import annotations

from kit.grpc_server import Metadata, require_ops

OPS_METHODS = frozenset({"/mall.points.v1.PointsService/AdjustPoints"})


async def authenticate(method: str, metadata: Metadata) -> dict[str, str]:
    """``authenticate(method, metadata)`` for the gRPC server; no caller fields to log."""
    if method in OPS_METHODS:
        require_ops(method)
    return {}
