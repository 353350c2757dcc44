"""Shopping guides: tenants register them, shoppers bind to one where they paid, and a
guide's POS lists the members bound to that guide and nobody else's."""

from __future__ import annotations

from datetime import datetime

from eventbus.outbox import add_events, event
from kit.db import Connection
from kit.errors import Conflict, Forbidden, InvalidInput, NotFound
from kit.proto import timestamp
from mall.member.v1 import events_pb2

from member.adapters import guides, merges, repository
from member.domain.credentials import Principal
from member.domain.guides import Guide, GuideMember, check_guide, page_token, parse_page_token
from member.service_layer.credentials import authorize_store

GUIDE_BOUND = "member.guide.bound"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


async def register_guide(
    conn: Connection, caller: Principal, *, mall_id: str, store_id: str, guide_id: str, name: str
) -> Guide:
    """Inside the caller's transaction: create or update a guide of the caller's store. A guide
    id another tenant uses is refused (``guide_id_taken``)."""
    check_guide(guide_id, name)
    await authorize_store(conn, caller, mall_id, store_id)
    stored = await guides.upsert_guide(
        conn, Guide(mall_id, guide_id, caller.tenant_id, store_id, name.strip())
    )
    if stored.tenant_id != caller.tenant_id:
        raise Conflict("guide_id_taken", f"guide id {guide_id} is taken in this mall")
    return stored


async def bind_guide(
    conn: Connection, *, mall_id: str, member_id: str, guide_id: str
) -> tuple[Guide, datetime, str]:
    """Inside the caller's transaction: (guide, bound_at, previous guide id or ""). The member
    must have paid at the guide's store (``no_payment_at_store`` otherwise). Binding again to
    the same guide changes nothing; to another guide of the tenant, moves the binding."""
    if not mall_id or not member_id or not guide_id:
        raise InvalidInput("missing_field", "required: mall_id, member_id, guide_id")
    member = await repository.get_member(conn, mall_id, member_id)
    if member is None:
        raise NotFound("member_not_found", "no such member in this mall")
    member = (await merges.follow_merges(conn, {(mall_id, member_id): member}))[
        (mall_id, member_id)
    ]
    guide = await guides.get_guide(conn, mall_id, guide_id)
    if guide is None:
        raise NotFound("guide_not_found", f"no guide {guide_id} in this mall")
    if not await guides.paid_at_store(conn, mall_id, member.member_id, guide.store_id):
        raise Conflict(
            "no_payment_at_store", "a shopper binds to a guide of a store where they paid"
        )
    bound_at, before = await guides.bind(conn, mall_id, member.member_id, guide)
    if before != guide.guide_id:
        msg = events_pb2.GuideBound(
            occurred_at=timestamp(bound_at),
            member_id=member.member_id,
            guide_id=guide.guide_id,
            tenant_id=guide.tenant_id,
            store_id=guide.store_id,
            previous_guide_id=before or "",
        )
        await add_events(conn, [event(GUIDE_BOUND, msg, mall_id=mall_id)])
    return guide, bound_at, "" if before in (None, guide.guide_id) else str(before)


async def list_guide_members(
    conn: Connection,
    caller: Principal,
    *,
    mall_id: str,
    guide_id: str,
    page_size: int,
    token: str,
) -> tuple[list[GuideMember], str]:
    """One page of the guide's members and the next page's token (empty after the last). A
    guide of another tenant is refused exactly like an unknown one."""
    if page_size < 0:
        raise InvalidInput("invalid_page_size", "page_size must not be negative")
    after = parse_page_token(token)
    guide = await guides.get_guide(conn, caller.mall_id, guide_id)
    if mall_id != caller.mall_id or guide is None or guide.tenant_id != caller.tenant_id:
        raise Forbidden("guide_not_yours", f"guide {guide_id} is not a guide of this tenant")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    page = await guides.guide_members(conn, mall_id, guide_id, after=after, limit=size + 1)
    more = len(page) > size
    page = page[:size]
    return page, page_token(page[-1].bound_at, page[-1].member_id) if more else ""
