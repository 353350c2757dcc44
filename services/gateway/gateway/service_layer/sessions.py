"""Log in as WeChat does it, keep the session fresh, join: plain functions over ports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import structlog
from kit.errors import NotFound, Unavailable

from gateway.domain.shoppers import MemberCard, Session, TokenPair, WechatIdentity

log = structlog.get_logger(__name__)


class Malls(Protocol):
    def mall_for_appid(self, appid: str) -> str | None: ...


class CodeExchange(Protocol):
    def knows(self, appid: str) -> bool: ...

    async def code_to_session(self, appid: str, code: str) -> WechatIdentity: ...


class Members(Protocol):
    async def member_by_openid(self, mall_id: str, openid: str) -> MemberCard | None: ...

    async def member_by_id(self, mall_id: str, member_id: str) -> MemberCard | None: ...

    async def join_member(
        self, mall_id: str, openid: str, phone: str
    ) -> tuple[MemberCard, bool]: ...


class Tokens(Protocol):
    def issue(self, session: Session) -> TokenPair: ...

    def read_refresh(self, token: str) -> tuple[Session, str]: ...


class SpentTokens(Protocol):
    async def spend(self, token_id: str) -> None: ...


@dataclass(frozen=True)
class LoggedIn:
    tokens: TokenPair
    member: MemberCard | None


#: Merges followed at most (a survivor merged again later is another hop).
MAX_MERGE_HOPS = 4


async def _survivor(members: Members, mall_id: str, member: MemberCard | None) -> MemberCard | None:
    """A member merged into another (found to be the same person) answers as the survivor,
    never as the emptied account."""
    for _ in range(MAX_MERGE_HOPS):
        if member is None or not member.merged_into:
            return member
        member = await members.member_by_id(mall_id, member.merged_into)
    return member


def _not_a_member() -> NotFound:
    return NotFound("not_a_member", "join the mall first (POST /v1/me/join)")


async def login(
    appid: str,
    code: str,
    *,
    malls: Malls,
    directory_ready: bool,
    wechat: CodeExchange,
    members: Members,
    tokens: Tokens,
) -> LoggedIn:
    """A ``wx.login`` code of the mall's mini-program → the gateway's own session."""
    mall_id = malls.mall_for_appid(appid)
    if mall_id is None:
        if not directory_ready:
            raise Unavailable("directory_loading", "the gateway is starting; retry shortly")
        raise NotFound("unknown_miniprogram", f"appid {appid} is not a mall's mini-program")
    if not wechat.knows(appid):
        log.error("miniprogram_secret_missing", appid=appid, mall_id=mall_id)
        raise NotFound("unknown_miniprogram", f"appid {appid} is not a mall's mini-program")
    identity = await wechat.code_to_session(appid, code)
    member = await members.member_by_openid(mall_id, identity.openid)
    session = Session(
        mall_id, identity.openid, member.member_id if member else None, identity.unionid
    )
    return LoggedIn(tokens.issue(session), member)


async def refresh(
    refresh_token: str, *, tokens: Tokens, spent: SpentTokens, members: Members
) -> LoggedIn:
    """A new pair for a refresh token that was never used before (rotation)."""
    session, token_id = tokens.read_refresh(refresh_token)
    await spent.spend(token_id)
    member = await _survivor(
        members,
        session.mall_id,
        await members.member_by_id(session.mall_id, session.member_id)
        if session.member_id
        else await members.member_by_openid(session.mall_id, session.openid),
    )
    if member is not None and member.member_id != session.member_id:
        session = session.with_member(member.member_id)  # joined by paying since, or merged
    return LoggedIn(tokens.issue(session), member)


async def current_member(session: Session, members: Members) -> MemberCard:
    """The session's member: by the token's member id, else by its openid (they may have
    become a member by paying since they logged in)."""
    if session.member_id:
        member = await members.member_by_id(session.mall_id, session.member_id)
    else:
        member = await members.member_by_openid(session.mall_id, session.openid)
    member = await _survivor(members, session.mall_id, member)
    if member is None:
        raise _not_a_member()
    return member


async def member_id_of(session: Session, members: Members) -> str:
    if session.member_id:
        return session.member_id
    return (await current_member(session, members)).member_id


async def join(
    session: Session, phone: str, *, members: Members, tokens: Tokens
) -> tuple[MemberCard, bool, TokenPair]:
    """Join the session's mall from the mini-program; fresh tokens carry the member id."""
    member, created = await members.join_member(session.mall_id, session.openid, phone)
    return member, created, tokens.issue(session.with_member(member.member_id))
