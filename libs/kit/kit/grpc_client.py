"""Client channels between Mall Circle services: calls spread over every replica of the
target, and carry the correlation context to the next service.

gRPC keeps one HTTP/2 connection per channel and sends every call down it, so with the
default ``pick_first`` policy a client pinned to a Service's one ClusterIP (or to the first
address a name resolves to) talks to one replica for the connection's life. The channels
here use ``round_robin`` instead: given a name with several addresses (a headless Service,
``dns:///member-grpc:50061``; or ``ipv4:10.0.0.1:50061,10.0.0.2:50061``) they connect to
each and take turns, skipping the ones not connected. A replica added later is found when
the name is resolved again: when a connection closes, which the servers make happen every
``GRPC_MAX_CONNECTION_AGE_S`` (kit.grpc_server). A target with one address behaves as before.

Each connection also watches its server's health (gRPC client-side health checking, the
server's overall ``grpc.health.v1`` status, which kit.grpc_server keeps following its
PostgreSQL and NATS and turns NOT_SERVING first when it stops): round_robin leaves a replica
out while it says NOT_SERVING and takes it back when it serves again. Kubernetes readiness
drops an unready pod from the headless Service's addresses, but a client resolves again only
when a connection closes (up to ``GRPC_MAX_CONNECTION_AGE_S``); this takes effect at once.
If every replica says NOT_SERVING, calls fail UNAVAILABLE at once (or wait, with
``wait_for_ready``).

Keepalive pings every 30 s (answer within 10 s) find a connection to a pod that vanished
without closing it (node lost): round_robin then stops choosing it instead of letting calls
wait out their deadline there. kit.grpc_server accepts pings that often, even with no call
in flight (round_robin keeps a connection to every replica, some idle at times).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc

from kit import context

#: The load-balancing policy and health checking for every channel. Resolution-supplied configs
#: are ignored (DNS TXT records are not looked up by default anyway), so this one always applies.
SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.service_config", SERVICE_CONFIG),
    ("grpc.service_config_disable_resolution", 1),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    # Keep pinging an idle connection (the default stops after two pings without data).
    ("grpc.http2.max_pings_without_data", 0),
]


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
    """A channel to another Mall Circle service inside the cluster (mTLS is the mesh's job),
    balanced over every address ``target`` resolves to."""
    return grpc.aio.insecure_channel(
        target,
        options=CHANNEL_OPTIONS,
        interceptors=[_ForwardContext()],  # type: ignore[list-item]
    )
