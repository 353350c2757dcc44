"""Joining: from the mini-program (phone + consent) and by authorising points; either one
releases the shopper's pending payments (within the mall's window) to be attributed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from eventbus.outbox import add_events
from kit.db import Connection
from kit.errors import Conflict, InvalidInput, NotFound

from member.adapters import consents, join_events, profiles, repository
from member.domain.joining import AuthorizationChange, JoinPolicy, normalise_phone
from member.domain.model import Attribution, JoinChannel
from member.domain.tags import MemberProfile
from member.service_layer.payments import attribute_payments

log = structlog.get_logger(__name__)

TERMS = "terms"


@dataclass(frozen=True)
class JoinResult:
    member: MemberProfile
    created: bool
    attributed: list[Attribution]  # pending payments attributed by this join


async def release_pending(
    conn: Connection, keys: Sequence[tuple[str, str]], now: datetime
) -> list[Attribution]:
    """Attribute the pending payments of these (mall_id, openid), oldest first, once: the rows
    are taken out as they are attributed. The caller holds their shopper locks."""
    taken, expired = await consents.take_pending(conn, sorted(set(keys)), now)
    if expired:
        log.info("pending_payments_expired", count=expired)
    return await attribute_payments(conn, taken, now) if taken else []


async def join_member(
    conn: Connection,
    *,
    mall_id: str,
    openid: str,
    channel: JoinChannel,
    phone: str,
    now: datetime | None = None,
) -> JoinResult:
    """Inside the caller's transaction. Joining twice returns the existing member; a phone
    held by another member of the mall is refused (``phone_taken``) and changes nothing."""
    now = now or datetime.now(UTC)
    if not mall_id or not openid:
        raise InvalidInput("missing_field", "required: mall_id, identity")
    if channel is not JoinChannel.MINI_PROGRAM:
        raise InvalidInput("unsupported_channel", "JoinMember joins from the mini-program")
    if not phone:
        raise InvalidInput("missing_field", "required: phone (mini-program joins)")
    e164 = normalise_phone(phone)
    if await repository.get_mall(conn, mall_id) is None:
        raise NotFound("unknown_mall", f"no mall {mall_id}")
    await consents.lock_shoppers(conn, [(mall_id, openid)])
    joined = await repository.join_by_identities(conn, "openid", [(mall_id, openid)], channel)
    member = joined[(mall_id, openid)]
    holder = await profiles.link_identity(conn, mall_id, "phone", e164, member.member_id)
    if holder != member.member_id:
        raise Conflict("phone_taken", "this phone number belongs to another member")
    await consents.record_consent(conn, mall_id, member.member_id, TERMS, channel.value, now)
    if member.joined_now:
        await add_events(
            conn,
            [
                join_events.member_joined(
                    mall_id=mall_id,
                    member_id=member.member_id,
                    channel=channel,
                    tier_code=member.tier_code,
                    at=now,
                )
            ],
        )
    attributed = await release_pending(conn, [(mall_id, openid)], now)
    found = await profiles.profile(conn, mall_id, member.member_id)
    assert found is not None, "joined in this transaction"
    return JoinResult(found, member.joined_now, attributed)


async def authorizations_changed(
    conn: Connection,
    changes: Sequence[tuple[AuthorizationChange, dict[str, str]]],
    now: datetime | None = None,
) -> list[Attribution]:
    """Inside the caller's transaction: remember that these shoppers authorised, and
    attribute what they paid while waiting (joining them on payment). Repeats change nothing."""
    now = now or datetime.now(UTC)
    malls = await repository.malls_for_appids(conn, [c.appid for c, _ in changes])
    for change, _ in changes:
        if change.appid not in malls:
            raise NotFound("unknown_mall", f"no mall has appid {change.appid}")
    keys = [(malls[c.appid], c.openid) for c, _ in changes]
    await consents.lock_shoppers(conn, keys)
    await consents.record_authorizations(conn, [(malls[c.appid], c) for c, _ in changes])
    return await release_pending(conn, keys, now)


async def set_join_policy(conn: Connection, mall_id: str, policy: JoinPolicy) -> None:
    """How the mall joins payers (ops; CreateMall has no field for it)."""
    if not 0 <= policy.window_days <= 365:
        raise InvalidInput("invalid_window", "join window must be 0-365 days")
    if await repository.get_mall(conn, mall_id) is None:
        raise NotFound("unknown_mall", f"no mall {mall_id}")
    await consents.set_join_policy(conn, mall_id, policy)
