"""SQL for the points-sync queue (``wechat_points_sync``).

Claiming is one statement: due rows are picked ``FOR UPDATE SKIP LOCKED`` and, in the same
statement, given a lease (``next_attempt_at`` moves past the call's timeout) and a new
``attempts`` value. The claim commits before the HTTP call, so no transaction stays open
across the network and no other worker can pick the row while the call is in flight. The
outcome is written only if ``attempts`` still equals the claim's: a worker whose lease ran
out (and whose row another worker claimed since) cannot overwrite the newer outcome.

The worker's queries span malls, like the outbox relay's; everything else is by mall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kit.db import Connection

from points.domain.wechat_sync import PointsReport, SyncKind, SyncState

#: Postgres NOTIFY channel: a queued report wakes the worker without waiting for its poll.
NOTIFY_CHANNEL = "wechat_points_sync"

_COLUMNS = """mall_id, transaction_id, kind, openid, appid, sub_mchid, earn_points,
              increased_points, total_points, points_update_time, no_points_remarks, state,
              attempts, next_attempt_at, error_code, last_error, created_at, sent_at"""


@dataclass(frozen=True)
class ClaimedReport:
    report: PointsReport
    points_update_time: datetime
    #: ``attempts`` after this claim: the token that must still match when the outcome is saved.
    attempt: int


@dataclass(frozen=True)
class Outcome:
    mall_id: str
    transaction_id: str
    kind: SyncKind
    attempt: int
    state: SyncState
    retry_in_s: float = 0.0
    error_code: str | None = None
    error: str | None = None


async def queue_reports(conn: Connection, reports: Sequence[PointsReport]) -> None:
    """Queue reports inside the caller's transaction; their time is the transaction's."""
    if not reports:
        return
    await conn.execute(
        """INSERT INTO wechat_points_sync
               (mall_id, transaction_id, kind, openid, appid, sub_mchid, earn_points,
                increased_points, total_points, points_update_time, no_points_remarks)
           SELECT m, x, k, o, a, s, e, i, t, now(), r
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::boolean[], $8::bigint[], $9::bigint[], $10::text[])
                  AS u(m, x, k, o, a, s, e, i, t, r)
           ON CONFLICT (mall_id, transaction_id, kind) DO NOTHING""",
        [r.mall_id for r in reports],
        [r.transaction_id for r in reports],
        [r.kind.value for r in reports],
        [r.openid for r in reports],
        [r.appid for r in reports],
        [r.sub_mchid for r in reports],
        [r.earn_points for r in reports],
        [r.increased_points for r in reports],
        [r.total_points for r in reports],
        [r.no_points_remarks for r in reports],
    )
    await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")


async def queue_reversal_report(conn: Connection, report: PointsReport) -> None:
    """Queue (or bring up to date) the payment's reversal report in the caller's transaction.

    One report per payment says where its points stand after all its refunds: a later
    refund rewrites it and sends it again. Bumping ``attempts`` fences a worker that holds
    the older content, so its outcome cannot mark the newer one sent.
    """
    await conn.execute(
        """INSERT INTO wechat_points_sync
               (mall_id, transaction_id, kind, openid, appid, sub_mchid, earn_points,
                increased_points, total_points, points_update_time, no_points_remarks)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), $10)
           ON CONFLICT (mall_id, transaction_id, kind) DO UPDATE
              SET total_points = EXCLUDED.total_points,
                  no_points_remarks = EXCLUDED.no_points_remarks,
                  points_update_time = now(), state = 'PENDING', sent_at = NULL,
                  attempts = wechat_points_sync.attempts + 1, next_attempt_at = now(),
                  error_code = NULL, last_error = NULL""",
        report.mall_id,
        report.transaction_id,
        report.kind.value,
        report.openid,
        report.appid,
        report.sub_mchid,
        report.earn_points,
        report.increased_points,
        report.total_points,
        report.no_points_remarks,
    )
    await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")


def _report(row: Any) -> PointsReport:
    return PointsReport(
        mall_id=row["mall_id"],
        transaction_id=row["transaction_id"],
        kind=SyncKind(row["kind"]),
        openid=row["openid"],
        appid=row["appid"],
        earn_points=row["earn_points"],
        increased_points=row["increased_points"],
        total_points=row["total_points"],
        no_points_remarks=row["no_points_remarks"],
        sub_mchid=row["sub_mchid"],
    )


async def claim_due(conn: Connection, *, limit: int, lease_s: float) -> list[ClaimedReport]:
    """Take up to ``limit`` due reports for ``lease_s`` seconds (one short transaction)."""
    rows = await conn.fetch(
        f"""UPDATE wechat_points_sync s
               SET attempts = s.attempts + 1,
                   next_attempt_at = now() + make_interval(secs => $2)
              FROM (SELECT mall_id, transaction_id, kind FROM wechat_points_sync w
                     WHERE state = 'PENDING' AND next_attempt_at <= now()
                       -- a reversal waits for its payment's credit: the platform must hear
                       -- "+N" before "back to M", never the other way round
                       AND NOT (kind = 'reversal' AND EXISTS (
                               SELECT 1 FROM wechat_points_sync c
                                WHERE c.mall_id = w.mall_id
                                  AND c.transaction_id = w.transaction_id
                                  AND c.kind = 'credit' AND c.state <> 'SENT'))
                     ORDER BY next_attempt_at
                     LIMIT $1
                     FOR UPDATE SKIP LOCKED) due
             WHERE (s.mall_id, s.transaction_id, s.kind)
                 = (due.mall_id, due.transaction_id, due.kind)
         RETURNING {", ".join(f"s.{c.strip()}" for c in _COLUMNS.split(","))}""",
        limit,
        lease_s,
    )
    return [ClaimedReport(_report(r), r["points_update_time"], r["attempts"]) for r in rows]


async def save_outcomes(conn: Connection, outcomes: Sequence[Outcome]) -> int:
    """Record what the platform said, fenced by ``attempt``; return how many rows took it."""
    if not outcomes:
        return 0
    rows = await conn.fetch(
        """UPDATE wechat_points_sync s
              SET state = t.state,
                  sent_at = CASE WHEN t.state = 'SENT' THEN now() END,
                  next_attempt_at = CASE WHEN t.state = 'PENDING'
                                         THEN now() + make_interval(secs => t.delay)
                                         ELSE s.next_attempt_at END,
                  error_code = t.code,
                  last_error = t.error
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[],
                         $6::float8[], $7::text[], $8::text[])
                  AS t(m, x, k, a, state, delay, code, error)
            WHERE (s.mall_id, s.transaction_id, s.kind) = (t.m, t.x, t.k)
              AND s.attempts = t.a AND s.state = 'PENDING'
        RETURNING 1""",
        [o.mall_id for o in outcomes],
        [o.transaction_id for o in outcomes],
        [o.kind.value for o in outcomes],
        [o.attempt for o in outcomes],
        [o.state.value for o in outcomes],
        [o.retry_in_s for o in outcomes],
        [o.error_code for o in outcomes],
        [None if o.error is None else o.error[:2000] for o in outcomes],
    )
    return len(rows)


# -- ops ------------------------------------------------------------------------------------


async def count_by_state(conn: Connection, *, transaction_id: str | None = None) -> dict[str, int]:
    rows = await conn.fetch(
        """SELECT state, count(*) AS n FROM wechat_points_sync
            WHERE $1::text IS NULL OR transaction_id = $1
            GROUP BY state""",
        transaction_id,
    )
    counts = dict.fromkeys((s.value for s in SyncState), 0)
    counts.update({r["state"]: r["n"] for r in rows})
    return counts


@dataclass(frozen=True)
class Backlog:
    pending: int
    failed: int
    oldest_pending_s: float


async def backlog(conn: Connection) -> Backlog:
    """What is not SENT (cheap: reads the partial index of unsent rows)."""
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE state = 'PENDING') AS pending,
                  count(*) FILTER (WHERE state = 'FAILED') AS failed,
                  coalesce(extract(epoch FROM now() - min(created_at)
                                   FILTER (WHERE state = 'PENDING')), 0)::float8 AS oldest
             FROM wechat_points_sync WHERE state <> 'SENT'"""
    )
    assert row is not None  # an aggregate always answers one row
    return Backlog(row["pending"], row["failed"], row["oldest"])


async def list_reports(
    conn: Connection, *, transaction_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """One payment's rows (any state), or the rows not yet SENT, oldest first."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM wechat_points_sync
             WHERE CASE WHEN $1::text IS NULL THEN state <> 'SENT' ELSE transaction_id = $1 END
             ORDER BY created_at, mall_id, transaction_id, kind
             LIMIT $2""",
        transaction_id,
        limit,
    )
    return [dict(r) for r in rows]


async def requeue_failed(
    conn: Connection, mall_id: str, transaction_id: str, kind: SyncKind = SyncKind.CREDIT
) -> bool:
    """Send a FAILED report again (after ops fixed its cause); False if none was FAILED."""
    done = await conn.fetchval(
        """UPDATE wechat_points_sync SET state = 'PENDING', next_attempt_at = now()
            WHERE mall_id = $1 AND transaction_id = $2 AND kind = $3 AND state = 'FAILED'
        RETURNING true""",
        mall_id,
        transaction_id,
        kind.value,
    )
    if done:
        await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return bool(done)


async def requeue_failed_with_code(conn: Connection, error_code: str) -> int:
    """Send again every FAILED report the platform refused with ``error_code`` (after a fix
    of what every report hit: a merchant key, a permission); return how many."""
    count = await conn.fetchval(
        """WITH requeued AS (
               UPDATE wechat_points_sync SET state = 'PENDING', next_attempt_at = now()
                WHERE state = 'FAILED' AND error_code = $1
            RETURNING 1)
           SELECT count(*) FROM requeued""",
        error_code,
    )
    if count:
        await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return int(count or 0)
