"""SQL for join policies, points authorisations, pending payments and consents."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime

from kit.db import Connection

from member.domain.joining import DEFAULT_POLICY, AuthorizationChange, JoinOnPayment, JoinPolicy
from member.domain.model import CapturedPayment


async def join_policies(conn: Connection, mall_ids: Sequence[str]) -> dict[str, JoinPolicy]:
    """mall_id → its join policy (the default for malls that set none)."""
    rows = await conn.fetch(
        """SELECT mall_id, join_on_payment, join_window_days FROM mall_join_policies
            WHERE mall_id = ANY($1::text[])""",
        list(set(mall_ids)),
    )
    found = {
        r["mall_id"]: JoinPolicy(JoinOnPayment(r["join_on_payment"]), r["join_window_days"])
        for r in rows
    }
    return {m: found.get(m, DEFAULT_POLICY) for m in mall_ids}


async def set_join_policy(conn: Connection, mall_id: str, policy: JoinPolicy) -> None:
    await conn.execute(
        """INSERT INTO mall_join_policies (mall_id, join_on_payment, join_window_days)
           VALUES ($1, $2, $3)
           ON CONFLICT (mall_id) DO UPDATE
              SET join_on_payment = $2, join_window_days = $3, updated_at = now()""",
        mall_id,
        policy.join_on_payment.value,
        policy.window_days,
    )


async def lock_shoppers(conn: Connection, keys: Sequence[tuple[str, str]]) -> None:
    """Serialise the join decision per (mall_id, openid) until the transaction ends.

    A payment deciding to hold, and an authorisation or a join releasing what is held, take
    this lock first (in one order, so batches cannot deadlock): whichever comes second sees
    what the first committed, so no payment is held after its shopper authorised or joined.
    """
    if not keys:
        return
    await conn.execute(
        """SELECT pg_advisory_xact_lock(k) FROM (
               SELECT DISTINCT hashtextextended(m || '/' || v, 0) AS k
                 FROM unnest($1::text[], $2::text[]) AS t(m, v) ORDER BY k) AS keys""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )


async def members_or_authorized(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """The (mall_id, openid) that belong to a member or whose shopper authorised."""
    rows = await conn.fetch(
        """SELECT t.m, t.v FROM unnest($1::text[], $2::text[]) AS t(m, v)
            WHERE EXISTS (SELECT 1 FROM identities i
                           WHERE i.mall_id = t.m AND i.kind = 'openid' AND i.value = t.v)
               OR EXISTS (SELECT 1 FROM authorizations a
                           WHERE a.mall_id = t.m AND a.openid = t.v AND a.authorized)""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["m"], r["v"]) for r in rows}


async def record_authorizations(
    conn: Connection, changes: Sequence[tuple[str, AuthorizationChange]]
) -> None:
    """Keep each shopper's latest authorisation, in key order."""
    for mall_id, change in sorted(changes, key=lambda c: (c[0], c[1].openid)):
        await conn.execute(
            """INSERT INTO authorizations (mall_id, openid, authorized, auth_type, changed_at)
               VALUES ($1, $2, true, $3, $4)
               ON CONFLICT (mall_id, openid) DO UPDATE
                  SET authorized = true, auth_type = $3,
                      changed_at = greatest(authorizations.changed_at, $4)""",
            mall_id,
            change.openid,
            change.auth_type,
            change.changed_at,
        )


async def hold_payments(
    conn: Connection, held: Sequence[tuple[str, CapturedPayment, dict[str, str]]]
) -> None:
    """Record payments that wait for their shopper to authorise or join."""
    if not held:
        return
    await conn.execute(
        """INSERT INTO pending_payments (mall_id, transaction_id, openid, appid, mchid,
                                         shop_number, amount_fen, paid_at, event_id, headers)
           SELECT m, x, o, a, c, s, f, p, e, h::jsonb
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::bigint[], $8::timestamptz[], $9::text[], $10::text[])
                  AS t(m, x, o, a, c, s, f, p, e, h)
           ON CONFLICT (mall_id, transaction_id) DO NOTHING""",
        [m for m, _, _ in held],
        [p.transaction_id for _, p, _ in held],
        [p.openid for _, p, _ in held],
        [p.appid for _, p, _ in held],
        [p.mchid for _, p, _ in held],
        [p.shop_number for _, p, _ in held],
        [p.amount_fen for _, p, _ in held],
        [p.paid_at for _, p, _ in held],
        [p.event_id for _, p, _ in held],
        [json.dumps(h) for _, _, h in held],
    )


async def take_pending(
    conn: Connection, keys: Sequence[tuple[str, str]], now: datetime
) -> tuple[list[tuple[CapturedPayment, dict[str, str]]], int]:
    """Remove these shoppers' pending payments; those paid within their mall's window are
    returned (oldest first) to be attributed, the count of the expired ones dropped."""
    rows = await conn.fetch(
        """DELETE FROM pending_payments p USING unnest($1::text[], $2::text[]) AS t(m, v)
            WHERE p.mall_id = t.m AND p.openid = t.v
        RETURNING p.*, p.paid_at >= $3::timestamptz - make_interval(days => coalesce(
                  (SELECT join_window_days FROM mall_join_policies j
                    WHERE j.mall_id = p.mall_id), $4)) AS in_window""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        now,
        DEFAULT_POLICY.window_days,
    )
    rows = sorted(rows, key=lambda r: (r["paid_at"], r["transaction_id"]))
    taken = [
        (
            CapturedPayment(
                event_id=r["event_id"],
                transaction_id=r["transaction_id"],
                appid=r["appid"],
                mchid=r["mchid"],
                shop_number=r["shop_number"],
                openid=r["openid"],
                amount_fen=r["amount_fen"],
                paid_at=r["paid_at"],
            ),
            dict(json.loads(r["headers"])),
        )
        for r in rows
        if r["in_window"]
    ]
    return taken, len(rows) - len(taken)


async def record_consent(
    conn: Connection, mall_id: str, member_id: str, kind: str, channel: str, at: datetime
) -> None:
    """The first consent of its kind is kept (when the shopper first agreed)."""
    await conn.execute(
        """INSERT INTO consents (mall_id, member_id, kind, channel, consented_at)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
        mall_id,
        uuid.UUID(member_id),
        kind,
        channel,
        at,
    )
