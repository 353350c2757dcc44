"""Identification at checkout (会员识别): codes for shoppers, answers for tenant POS.

A tenant sees a member only through a valid checkout code or a payment at one of its own
stores, never by browsing: an identity lookup for a member who has not paid at this tenant
is refused exactly like one for nobody at all.
"""

from __future__ import annotations

from kit.db import Connection
from kit.errors import Conflict, Forbidden, NotFound

from member.adapters import checkout as sql
from member.adapters import merges, repository
from member.domain.checkout import CheckoutPolicy, IssuedCode, code_hash, new_code
from member.domain.credentials import Principal
from member.domain.model import Member
from member.service_layer.credentials import authorize_store


async def issue_checkout_code(
    conn: Connection, policy: CheckoutPolicy, mall_id: str, member_id: str
) -> IssuedCode:
    member = await repository.get_member(conn, mall_id, member_id)
    if member is None:
        raise NotFound("member_not_found", "no such member in this mall")
    member_id = (await merges.follow_merges(conn, {(mall_id, member_id): member}))[
        (mall_id, member_id)
    ].member_id  # a session still holding a merged member's id identifies the survivor
    code = new_code()
    expires_at = await sql.insert_code(conn, mall_id, code_hash(code), member_id, policy.code_ttl_s)
    return IssuedCode(code, expires_at)


async def identify_by_code(
    conn: Connection, caller: Principal, *, mall_id: str, store_id: str, code: str
) -> Member:
    """Inside the caller's transaction: the code is used up by this call."""
    await authorize_store(conn, caller, mall_id, store_id)
    digest = code_hash(code)
    member_id = await sql.consume_code(conn, mall_id, digest, store_id)
    if member_id is None:
        state = await sql.code_state(conn, mall_id, digest)
        if state == "used":
            raise Conflict("checkout_code_used", "this checkout code was used already")
        if state == "expired":
            raise Conflict("checkout_code_expired", "this checkout code has expired")
        raise NotFound("checkout_code_unknown", "no such checkout code in this mall")
    member = await repository.get_member(conn, mall_id, member_id)
    assert member is not None, "codes reference members"
    return member


async def identify_by_identity(
    conn: Connection, caller: Principal, *, mall_id: str, store_id: str, kind: str, value: str
) -> Member:
    await authorize_store(conn, caller, mall_id, store_id)
    member = await repository.member_by_identity(conn, mall_id, kind, value)
    if member is None or not await sql.paid_at_tenant(
        conn, mall_id, member.member_id, caller.tenant_id
    ):
        raise Forbidden(
            "member_not_visible",
            "a tenant finds a member by identity only after they paid at one of its stores",
        )
    return member
