"""SQL for ops figures: a business day per car park."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kit.db import Connection


async def daily_figures(
    conn: Connection, mall_id: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Per car park: sessions entered and settled in [start, end), benefit and points minutes,
    points spent, fees, revenue and anomalies."""
    rows = await conn.fetch(
        """WITH settled AS (
               SELECT car_park_id, member_id, gross_fee_fen, discount_fen, paid_fen, benefits
                 FROM sessions
                WHERE mall_id = $1 AND status = 'settled' AND exited_at >= $2 AND exited_at < $3
           ), lines AS (
               SELECT s.car_park_id, b->>'kind' AS kind, (b->>'free_minutes')::bigint AS minutes,
                      coalesce((b->>'points')::bigint, 0) AS points
                 FROM settled s, jsonb_array_elements(s.benefits) b
           ), parks AS (
               SELECT car_park_id FROM sessions
                WHERE mall_id = $1 AND ((entered_at >= $2 AND entered_at < $3)
                                        OR (exited_at >= $2 AND exited_at < $3))
               UNION SELECT car_park_id FROM anomalies
                WHERE mall_id = $1 AND created_at >= $2 AND created_at < $3
           )
           SELECT p.car_park_id,
                  (SELECT count(*) FROM sessions s WHERE s.mall_id = $1
                      AND s.car_park_id = p.car_park_id AND s.entered_at >= $2
                      AND s.entered_at < $3 AND NOT s.entry_missing) AS sessions_started,
                  (SELECT count(*) FROM settled s WHERE s.car_park_id = p.car_park_id)
                      AS sessions_settled,
                  (SELECT count(*) FROM settled s WHERE s.car_park_id = p.car_park_id
                      AND s.member_id IS NULL) AS visitor_sessions,
                  (SELECT coalesce(sum(minutes), 0)::bigint FROM lines l
                      WHERE l.car_park_id = p.car_park_id AND l.kind <> 'points')
                      AS benefit_minutes,
                  (SELECT coalesce(sum(minutes), 0)::bigint FROM lines l
                      WHERE l.car_park_id = p.car_park_id AND l.kind = 'points') AS points_minutes,
                  (SELECT coalesce(sum(points), 0)::bigint FROM lines l
                      WHERE l.car_park_id = p.car_park_id) AS points_spent,
                  (SELECT coalesce(sum(gross_fee_fen), 0)::bigint FROM settled s
                      WHERE s.car_park_id = p.car_park_id) AS gross_fee_fen,
                  (SELECT coalesce(sum(discount_fen), 0)::bigint FROM settled s
                      WHERE s.car_park_id = p.car_park_id) AS discount_fen,
                  (SELECT coalesce(sum(paid_fen), 0)::bigint FROM settled s
                      WHERE s.car_park_id = p.car_park_id) AS revenue_fen,
                  (SELECT count(*) FROM anomalies a WHERE a.mall_id = $1
                      AND a.car_park_id = p.car_park_id AND a.created_at >= $2
                      AND a.created_at < $3) AS anomalies
             FROM parks p ORDER BY p.car_park_id""",
        mall_id,
        start,
        end,
    )
    return [dict(r) for r in rows]
