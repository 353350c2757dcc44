"""Prometheus metrics every service exposes (the official prometheus-client).

Names are a contract with the dashboards and alerts in deploy/k8s (listed in
deploy/README.md): change them only together.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

GRPC_REQUESTS = Counter(
    "mall_grpc_requests_total",
    "gRPC calls handled, by method and outcome code",
    ["method", "code"],
)
GRPC_LATENCY = Histogram(
    "mall_grpc_request_duration_seconds",
    "gRPC call handling time",
    ["method"],
    buckets=_LATENCY,
)
GRPC_STREAM_MESSAGES = Counter(
    "mall_grpc_stream_messages_total",
    "Requests answered inside a gRPC stream (each a unit of work), by method and outcome code",
    ["method", "code"],
)
HTTP_REQUESTS = Counter(
    "mall_http_requests_total",
    "HTTP requests handled, by route and status",
    ["route", "status"],
)
HTTP_LATENCY = Histogram(
    "mall_http_request_duration_seconds",
    "HTTP request handling time",
    ["route"],
    buckets=_LATENCY,
)
CONSUMER_MESSAGES = Counter(
    "mall_consumer_messages_total",
    "Messages settled by a consumer: handled, duplicate, retried, dead_lettered",
    ["consumer", "outcome"],
)
CONSUMER_LAG = Gauge(
    "mall_consumer_lag",
    "Messages on the stream this consumer has not been given yet (sampled)",
    ["consumer"],
)
CONSUMER_REDELIVERIES = Counter(
    "mall_consumer_redeliveries_total", "Messages that arrived more than once", ["consumer"]
)
CONSUMER_BATCH = Histogram(
    "mall_consumer_batch_seconds",
    "Time to handle and commit one fetched batch",
    ["consumer"],
    buckets=_LATENCY,
)
DEAD_LETTERS = Counter(
    "mall_dead_letters_total",
    "Messages a consumer gave up on (listed and replayable)",
    ["consumer"],
)
OUTBOX_PUBLISHED = Counter("mall_outbox_published_total", "Events the relay published to JetStream")
OUTBOX_BACKLOG = Gauge(
    "mall_outbox_backlog", "Events committed but not yet published (sampled by the relay)"
)
