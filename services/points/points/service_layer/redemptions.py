"""Redeem points in two steps: hold, then confirm (spend) or release (give back).

Each use case is one transaction on the member's locked account, so concurrent holds can
never reserve more than is available. Holds change availability, not the balance: only a
confirmation writes a ledger entry ('redemption'). Holds past ``expires_at`` stop counting at
once and are released (with their PointsHoldReleased event) whenever their account or the
hold itself is next touched; there is no background sweeper yet.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from eventbus.outbox import add_events
from kit.db import Connection
from kit.errors import Conflict, NotFound

from points.adapters import events, holds, lots, policies, repository
from points.adapters.repository import Account
from points.domain.debt import split_debit
from points.domain.redemption import (
    Hold,
    HoldRequest,
    ReleaseReason,
    Step,
    confirm_step,
    ensure_available,
    release_step,
    request_id_reused,
)

DEFAULT_HOLD_TTL = timedelta(minutes=15)


async def lock_account(conn: Connection, mall_id: str, member_id: str) -> tuple[int, datetime]:
    """Lock (opening if need be) the account and release its timed-out holds; return its
    balance and the transaction's clock (the one ``expires_at`` is compared with)."""
    balances = await repository.lock_accounts(conn, [(mall_id, member_id)])
    expired = await holds.expire_holds(conn, mall_id, member_id)
    await add_events(conn, [events.points_hold_released(h, ReleaseReason.EXPIRED) for h in expired])
    now: datetime = await conn.fetchval("SELECT now()")
    return balances[(mall_id, member_id)], now


async def hold_points(
    conn: Connection, request: HoldRequest, ttl: timedelta = DEFAULT_HOLD_TTL
) -> tuple[Hold, Account]:
    """Reserve points; a retry with the same request_id gets the same hold back."""
    async with conn.transaction():
        balance, _ = await lock_account(conn, request.mall_id, request.member_id)
        hold = await holds.by_request(conn, request.mall_id, request.request_id)
        if hold is None:
            held = await holds.held_points(conn, request.mall_id, request.member_id)
            ensure_available(balance - held, request.points)
            hold = await holds.insert(conn, request, ttl) or await holds.by_request(
                conn, request.mall_id, request.request_id
            )
            assert hold is not None
        if not hold.answers(request):
            raise request_id_reused(request.request_id)
        account = await repository.get_account(conn, request.mall_id, request.member_id)
    return hold, account


async def _locked_hold(conn: Connection, mall_id: str, hold_id: str) -> tuple[Hold, int, datetime]:
    """The hold, locked after its account (the order every use case takes locks in)."""
    found = await holds.get(conn, mall_id, hold_id)
    if found is None:
        raise NotFound("hold_not_found", f"no hold {hold_id}")
    balance, now = await lock_account(conn, mall_id, found.member_id)
    hold = await holds.get(conn, mall_id, hold_id, lock=True)
    assert hold is not None
    return hold, balance, now


async def confirm_hold(conn: Connection, mall_id: str, hold_id: str) -> tuple[str, Account]:
    """Spend a held hold: the redemption id and the account after it. Confirming again
    answers the same; a released or timed-out hold is refused (``hold_not_held``)."""
    refusal: Conflict | None = None
    async with conn.transaction():
        hold, balance, now = await _locked_hold(conn, mall_id, hold_id)
        try:
            step = confirm_step(hold, now)
        except Conflict as error:
            refusal, step = error, Step.DONE  # commit the expiry it found, then refuse
        if step is Step.APPLY:
            # a refund since the hold may have left less than it holds: the mall's policy says
            policy = (await policies.negative_balance(conn, [mall_id]))[mall_id]
            debit = split_debit(policy, balance, hold.points)
            balance_after = balance - debit.taken
            redemption_id = await holds.confirm(conn, hold, balance_after, debit.taken)
            await policies.add_debts(conn, {(mall_id, hold.member_id): debit.debt})
            await lots.consume(conn, mall_id, hold.member_id, hold.points)
            await add_events(conn, [events.points_redeemed(hold, redemption_id, balance_after)])
        else:
            redemption_id = hold.redemption_id or ""
        account = await repository.get_account(conn, mall_id, hold.member_id)
    if refusal is not None:
        raise refusal
    return redemption_id, account


async def release_hold(conn: Connection, mall_id: str, hold_id: str, note: str = "") -> Account:
    """Give held points back (e.g. the reward could not be delivered). Releasing again, or a
    hold that timed out, answers the same; a confirmed hold is refused (``hold_not_held``)."""
    refusal: Conflict | None = None
    async with conn.transaction():
        hold, _, now = await _locked_hold(conn, mall_id, hold_id)
        try:
            step = release_step(hold, now)
        except Conflict as error:
            refusal, step = error, Step.DONE
        if step is Step.APPLY:
            await holds.release(conn, hold, ReleaseReason.CANCELLED, note)
            await add_events(conn, [events.points_hold_released(hold, ReleaseReason.CANCELLED)])
        account = await repository.get_account(conn, mall_id, hold.member_id)
    if refusal is not None:
        raise refusal
    return account
