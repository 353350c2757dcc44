"""Prometheus metrics of the points sync to WeChat Pay (served by kit's /metrics endpoint).

Names are a contract with the alerts in deploy/: a FAILED report (the platform refused it)
and a report PENDING for long (the platform unreachable, or its answers not verifying) both
need a person.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

WECHAT_SYNC_CALLS = Counter(
    "mall_wechat_points_sync_total",
    "Points reports sent to WeChat Pay, by outcome: sent, retried, failed",
    ["outcome"],
)
WECHAT_SYNC_PENDING = Gauge(
    "mall_wechat_points_sync_pending", "Points reports not yet sent (sampled by the worker)"
)
WECHAT_SYNC_FAILED = Gauge(
    "mall_wechat_points_sync_failed",
    "Points reports the platform refused, waiting for ops (sampled by the worker)",
)
WECHAT_SYNC_OLDEST_PENDING = Gauge(
    "mall_wechat_points_sync_oldest_pending_seconds",
    "Age of the oldest report not yet sent; 0 when none (sampled by the worker)",
)
