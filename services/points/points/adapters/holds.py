"""SQL for holds (two-step redemptions). Every query is scoped by mall_id.

Callers lock the member's account first (``repository.lock_accounts``): every change to an
account's holds happens under that lock, so availability checks cannot race.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
from kit.db import Connection

from points.domain.redemption import Hold, HoldRequest, HoldState, ReleaseReason

_COLUMNS = """mall_id, hold_id, member_id, points, reward_kind, reward_ref, request_id, state,
              expires_at, redemption_id"""


def _hold(row: asyncpg.Record) -> Hold:
    return Hold(
        mall_id=row["mall_id"],
        hold_id=str(row["hold_id"]),
        member_id=str(row["member_id"]),
        points=row["points"],
        reward_kind=row["reward_kind"],
        reward_ref=row["reward_ref"],
        request_id=row["request_id"],
        state=HoldState(row["state"]),
        expires_at=row["expires_at"],
        redemption_id=str(row["redemption_id"]) if row["redemption_id"] else None,
    )


async def held_points(conn: Connection, mall_id: str, member_id: str) -> int:
    """Points reserved by the account's open, unexpired holds."""
    value = await conn.fetchval(
        """SELECT coalesce(sum(points), 0) FROM holds
            WHERE mall_id = $1 AND member_id = $2 AND state = 'HELD' AND expires_at > now()""",
        mall_id,
        uuid.UUID(member_id),
    )
    return int(value)


async def expire_holds(conn: Connection, mall_id: str, member_id: str) -> list[Hold]:
    """Turn the account's timed-out holds RELEASED; return them (for their events)."""
    rows = await conn.fetch(
        f"""UPDATE holds SET state = 'RELEASED', release_reason = 'expired', settled_at = now()
             WHERE mall_id = $1 AND member_id = $2 AND state = 'HELD' AND expires_at <= now()
         RETURNING {_COLUMNS}""",
        mall_id,
        uuid.UUID(member_id),
    )
    return [_hold(r) for r in rows]


async def by_request(conn: Connection, mall_id: str, request_id: str) -> Hold | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM holds WHERE mall_id = $1 AND request_id = $2",
        mall_id,
        request_id,
    )
    return _hold(row) if row else None


async def get(conn: Connection, mall_id: str, hold_id: str, *, lock: bool = False) -> Hold | None:
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM holds WHERE mall_id = $1 AND hold_id = $2
            {"FOR UPDATE" if lock else ""}""",
        mall_id,
        uuid.UUID(hold_id),
    )
    return _hold(row) if row else None


async def insert(conn: Connection, request: HoldRequest, ttl: timedelta) -> Hold | None:
    """A new HELD hold, or None when its request_id is taken (a concurrent retry)."""
    row = await conn.fetchrow(
        f"""INSERT INTO holds (mall_id, hold_id, member_id, points, reward_kind, reward_ref,
                               request_id, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, now() + $8::interval)
            ON CONFLICT (mall_id, request_id) DO NOTHING
            RETURNING {_COLUMNS}""",
        request.mall_id,
        uuid.uuid4(),
        uuid.UUID(request.member_id),
        request.points,
        request.reward_kind,
        request.reward_ref,
        request.request_id,
        ttl,
    )
    return _hold(row) if row else None


async def confirm(
    conn: Connection, hold: Hold, balance_after: int, taken: int | None = None
) -> str:
    """HELD → CONFIRMED, the 'redemption' entry (``taken`` points, all of the hold's by
    default) and the new balance; the redemption id."""
    redemption_id = uuid.uuid4()
    await conn.execute(
        """WITH settled AS (
               UPDATE holds SET state = 'CONFIRMED', redemption_id = $3, settled_at = now()
                WHERE mall_id = $1 AND hold_id = $2 AND state = 'HELD'
            RETURNING member_id),
           entry AS (
               INSERT INTO ledger (mall_id, member_id, kind, points, balance_after, reference,
                                   description)
               SELECT $1, member_id, 'redemption', $4, $5, $6, $7 FROM settled
            RETURNING member_id)
           UPDATE accounts a SET balance = $5, updated_at = now()
             FROM entry WHERE a.mall_id = $1 AND a.member_id = entry.member_id""",
        hold.mall_id,
        uuid.UUID(hold.hold_id),
        redemption_id,
        -(hold.points if taken is None else taken),
        balance_after,
        hold.hold_id,
        f"redeemed for {hold.reward_kind} {hold.reward_ref}",
    )
    return str(redemption_id)


async def release(conn: Connection, hold: Hold, reason: ReleaseReason, note: str) -> None:
    """HELD → RELEASED; the balance is untouched (the points were never taken)."""
    await conn.execute(
        """UPDATE holds SET state = 'RELEASED', release_reason = $3, release_note = $4,
                            settled_at = now()
            WHERE mall_id = $1 AND hold_id = $2 AND state = 'HELD'""",
        hold.mall_id,
        uuid.UUID(hold.hold_id),
        reason.value,
        note,
    )
