"""Hold the payments of shoppers who may not be joined on payment yet (支付即会员 needs the
shopper's authorisation in malls whose policy says so)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from kit.db import Connection

from member.adapters import consents
from member.domain.joining import JoinOnPayment
from member.domain.model import CapturedPayment

log = structlog.get_logger(__name__)

Incoming = tuple[CapturedPayment, dict[str, str]]


async def hold_unauthorised(
    conn: Connection, malls: dict[str, str], payments: Sequence[Incoming]
) -> list[Incoming]:
    """Inside the caller's transaction: record as pending the payments of shoppers who are
    neither members nor authorised, in malls that join only authorised payers; return the
    payments to attribute now."""
    policies = await consents.join_policies(conn, list(set(malls.values())))
    gated = [
        (malls[p.appid], p.openid)
        for p, _ in payments
        if policies[malls[p.appid]].join_on_payment is JoinOnPayment.AUTHORIZED
    ]
    if not gated:
        return list(payments)
    await consents.lock_shoppers(conn, gated)
    known = await consents.members_or_authorized(conn, gated)
    waiting = set(gated) - known
    held = [(malls[p.appid], p, h) for p, h in payments if (malls[p.appid], p.openid) in waiting]
    await consents.hold_payments(conn, held)
    if held:
        log.info("payments_pending", count=len(held))
    return [(p, h) for p, h in payments if (malls[p.appid], p.openid) not in waiting]
