"""SQL for the queue of calls to WeChat Pay about sessions (state sync, pay-score)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kit.db import Connection


async def enqueue(
    conn: Connection, mall_id: str, session_id: str, kind: str, payload: dict[str, Any]
) -> None:
    """Queue a call in the caller's transaction (once per session and kind)."""
    await conn.execute(
        """INSERT INTO wechat_calls (mall_id, session_id, kind, payload)
           VALUES ($1, $2::uuid, $3, $4::jsonb)
           ON CONFLICT (mall_id, session_id, kind) DO NOTHING""",
        mall_id,
        session_id,
        kind,
        json.dumps(payload),
    )


@dataclass(frozen=True)
class CallRow:
    id: int
    mall_id: str
    session_id: str
    kind: str
    state: str
    payload: dict[str, Any]
    attempts: int
    attempted_at: datetime | None
    last_error: str
    platform_ref: str


_COLUMNS = """id, mall_id, session_id::text, kind, state, payload, attempts, attempted_at,
    last_error, platform_ref"""


def _row(r: Any) -> CallRow:
    fields = dict(r)
    fields["payload"] = json.loads(fields["payload"])
    return CallRow(**fields)


async def for_session(conn: Connection, mall_id: str, session_id: str) -> list[CallRow]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM wechat_calls
             WHERE mall_id = $1 AND session_id = $2::uuid ORDER BY id""",
        mall_id,
        session_id,
    )
    return [_row(r) for r in rows]


async def claim_due(conn: Connection, limit: int, lease_s: float) -> list[CallRow]:
    """Due calls, leased so another worker replica skips them until the lease ends."""
    rows = await conn.fetch(
        f"""UPDATE wechat_calls SET next_at = now() + make_interval(secs => $2)
             WHERE id IN (SELECT id FROM wechat_calls
                           WHERE state = 'pending' AND next_at <= now()
                           ORDER BY next_at LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING {_COLUMNS}""",
        limit,
        lease_s,
    )
    return [_row(r) for r in rows]


async def finish(
    conn: Connection,
    call_id: int,
    *,
    state: str,
    error: str = "",
    platform_ref: str = "",
    retry_in_s: float = 0.0,
) -> None:
    await conn.execute(
        """UPDATE wechat_calls
              SET state = $2, attempts = attempts + 1, attempted_at = now(), last_error = $3,
                  platform_ref = CASE WHEN $4 = '' THEN platform_ref ELSE $4 END,
                  next_at = now() + make_interval(secs => $5)
            WHERE id = $1""",
        call_id,
        state,
        error[:1000],
        platform_ref,
        retry_in_s,
    )
