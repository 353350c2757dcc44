"""Coupon expiry: ``coupons.coupon.expiring`` exactly once per coupon some days (3) before it
expires, then, once its validity ended, status ``expired`` and ``coupons.coupon.expired``.

Safe with several workers at once (replicas, or the ops command next to the periodic job):
a batch locks the coupons it takes with SKIP LOCKED and, in one transaction, changes them
(``expiry_reminded_at`` stamped, or status ``expired``) and queues their events, so another
worker either skips them or finds them changed. ``exclusive`` runs also take a
transaction-level advisory lock, so replicas do not even contend for rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from eventbus.outbox import OutgoingEvent, add_events, event
from kit.db import Connection
from kit.proto import timestamp
from mall.coupons.v1 import events_pb2

from coupons.adapters import expiry as sql
from coupons.adapters.expiry import DueCoupon

EXPIRING = "coupons.coupon.expiring"
EXPIRED = "coupons.coupon.expired"
DEFAULT_BATCH = 500
DEFAULT_REMINDER = timedelta(days=3)
#: pg_try_advisory_xact_lock key of the periodic job: one replica works, the others skip.
EXPIRY_LOCK = "coupons.expire-coupons"


@dataclass(frozen=True)
class ExpiryRun:
    reminded: int = 0
    expired: int = 0


def _event_id(coupon: DueCoupon, what: str) -> str:
    return str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"coupons.coupon/{coupon.mall_id}/{coupon.coupon_id}/{what}")
    )


def expiring(coupon: DueCoupon) -> OutgoingEvent:
    message = events_pb2.CouponExpiring(
        coupon_id=coupon.coupon_id,
        stock_id=coupon.stock_id,
        member_id=coupon.member_id,
        expires_at=timestamp(coupon.valid_until),
    )
    return event(EXPIRING, message, mall_id=coupon.mall_id, event_id=_event_id(coupon, "expiring"))


def expired(coupon: DueCoupon) -> OutgoingEvent:
    message = events_pb2.CouponExpired(
        coupon_id=coupon.coupon_id,
        stock_id=coupon.stock_id,
        member_id=coupon.member_id,
        expired_at=timestamp(coupon.valid_until),
    )
    return event(EXPIRED, message, mall_id=coupon.mall_id, event_id=_event_id(coupon, "expired"))


async def _locked(conn: Connection, exclusive: bool) -> bool:
    if not exclusive:
        return True
    return bool(
        await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", EXPIRY_LOCK
        )
    )


async def run_expiry(
    conn: Connection,
    now: datetime,
    *,
    remind_before: timedelta = DEFAULT_REMINDER,
    limit: int = DEFAULT_BATCH,
    exclusive: bool = False,
) -> ExpiryRun | None:
    """Expire what is due, then remind of what expires within ``remind_before``, in batches
    of ``limit`` (one transaction each). None when another replica holds the job's lock."""
    expired_n = reminded_n = 0
    while True:
        async with conn.transaction():
            if not await _locked(conn, exclusive):
                return ExpiryRun(reminded_n, expired_n) if expired_n else None
            gone = await sql.expire(conn, now, limit)
            await add_events(conn, [expired(c) for c in gone])
        expired_n += len(gone)
        if len(gone) < limit:
            break
    while True:
        async with conn.transaction():
            if not await _locked(conn, exclusive):
                return ExpiryRun(reminded_n, expired_n)
            due = await sql.mark_reminders(conn, now, now + remind_before, limit)
            await add_events(conn, [expiring(c) for c in due])
        reminded_n += len(due)
        if len(due) < limit:
            return ExpiryRun(reminded_n, expired_n)
