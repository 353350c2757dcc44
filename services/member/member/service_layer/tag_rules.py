"""Tags by rule and the CRM's tag writes: rules are evaluated for the payer on every
``member.payment.attributed``, for everyone when a rule changes, and by a periodic job that
takes tags off members whose window has run out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from kit.db import Connection
from kit.errors import Conflict, InvalidInput, NotFound

from member.adapters import merges, profiles, repository
from member.adapters import tag_rules as sql
from member.domain.tag_rules import TagRule
from member.domain.tags import MAX_TAGS, MemberProfile, check_tag, normalise_tags

log = structlog.get_logger(__name__)


async def put_rule(
    conn: Connection, mall_id: str, rule: TagRule, now: datetime | None = None
) -> int:
    """Inside the caller's transaction: store the rule and evaluate it for every member;
    how many members carry the tag now."""
    if not mall_id:
        raise InvalidInput("missing_field", "required: mall_id")
    await sql.put_rule(conn, mall_id, rule)
    await sql.evaluate(conn, mall_id, now or datetime.now(UTC), None)
    return await sql.tagged(conn, mall_id, rule.tag)


async def delete_rule(conn: Connection, mall_id: str, tag: str) -> bool:
    """Inside the caller's transaction: drop the rule and the tags it set."""
    check_tag(tag)
    deleted = await sql.delete_rule(conn, mall_id, tag)
    await sql.evaluate(conn, mall_id, datetime.now(UTC), None)
    return deleted


async def tag_payers(
    conn: Connection, payers: Sequence[tuple[str, str]], now: datetime | None = None
) -> None:
    """Inside the consumer's transaction: re-evaluate the rules for these (mall, member)."""
    now = now or datetime.now(UTC)
    by_mall: dict[str, set[str]] = {}
    for mall_id, member_id in payers:
        by_mall.setdefault(mall_id, set()).add(member_id)
    for mall_id, members in sorted(by_mall.items()):
        added, removed = await sql.evaluate(conn, mall_id, now, sorted(members))
        if added or removed:
            log.info("rule_tags_changed", mall_id=mall_id, added=added, removed=removed)


async def evaluate_all(conn: Connection, now: datetime, *, exclusive: bool = False) -> int:
    """Every mall with rules, one transaction each: tags whose window ran out come off (and
    any the payments missed go on). With ``exclusive``, a mall another replica is evaluating
    is skipped. Returns the malls evaluated."""
    done = 0
    for mall_id in await sql.malls_with_rule_tags(conn):
        async with conn.transaction():
            if exclusive and not await sql.try_lock_mall(conn, mall_id):
                continue
            added, removed = await sql.evaluate(conn, mall_id, now, None)
        done += 1
        if added or removed:
            log.info("rule_tags_evaluated", mall_id=mall_id, added=added, removed=removed)
    return done


async def update_member_tags(
    conn: Connection, mall_id: str, member_id: str, add: Sequence[str], remove: Sequence[str]
) -> MemberProfile:
    """Inside the caller's transaction: add and remove manual tags (rule tags stay)."""
    adding, removing = normalise_tags(add), normalise_tags(remove)
    if await repository.get_member(conn, mall_id, member_id) is None:
        raise NotFound("member_not_found", "no such member in this mall")
    state = await merges.lock_for_merge(conn, mall_id, [member_id])
    if state[member_id].status != "active":
        raise Conflict("member_not_active", f"member {member_id} is {state[member_id].status}")
    manual = await sql.update_manual_tags(conn, mall_id, member_id, adding, removing)
    if manual > MAX_TAGS:  # raised inside the transaction: nothing is kept
        raise InvalidInput("too_many_tags", f"a member carries at most {MAX_TAGS} manual tags")
    found = await profiles.profile(conn, mall_id, member_id)
    assert found is not None, "locked above"
    return found


async def list_rules(conn: Connection, mall_id: str) -> list[TagRule]:
    return await sql.rules(conn, mall_id)
