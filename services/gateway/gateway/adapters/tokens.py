"""The gateway's own session tokens: short-lived access tokens and rotating refresh tokens.

Signed JWTs (HS256, ``SESSION_SIGNING_KEY``), so any gateway replica verifies them without a
lookup. joserfc checks them: as strict as PyJWT (base64url alphabet, algorithm allow-list,
essential claims) at about half its cost per token, which a flash grab's crowd of first-seen
tokens pays once each. Claims: ``mall`` (the mall the mini-program belongs to), ``sub``
(openid there), ``mid`` (member id, once a member), ``uid`` (unionid, when WeChat gave one),
``typ`` (access or refresh), ``jti``, ``iat``, ``exp``. An access token is refused where a
refresh token is expected and the other way round; issuer and audience are checked too.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import OctKey
from kit.errors import Unauthenticated

from gateway.domain.shoppers import Session, TokenPair

ISSUER = "mall-circle-gateway"
AUDIENCE = "mall-circle-miniprogram"
ALGORITHM = "HS256"
ACCESS = "access"
REFRESH = "refresh"


def invalid_session(detail: str = "log in again") -> Unauthenticated:
    return Unauthenticated("invalid_session", detail)


class SessionTokens:
    def __init__(
        self,
        key: str,
        *,
        access_ttl_s: int,
        refresh_ttl_s: int,
        clock: Callable[[], float] = time.time,
        remember: int = 50_000,
    ) -> None:
        if len(key.encode()) < 32:
            raise ValueError("the session signing key must be at least 32 bytes")
        self._key = OctKey.import_key(key)
        self._claims = jwt.JWTClaimsRegistry(
            leeway=0,
            iss={"essential": True, "value": ISSUER},
            aud={"essential": True, "value": AUDIENCE},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
            sub={"essential": True},
        )
        self._remember = remember
        self._verified: OrderedDict[str, tuple[Session, float]] = OrderedDict()
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self._clock = clock

    def _encode(self, session: Session, kind: str, ttl_s: int) -> str:
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "typ": kind,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + ttl_s,
            "mall": session.mall_id,
            "sub": session.openid,
        }
        if session.member_id:
            claims["mid"] = session.member_id
        if session.unionid:
            claims["uid"] = session.unionid
        return jwt.encode({"alg": ALGORITHM}, claims, self._key, algorithms=[ALGORITHM])

    def issue(self, session: Session) -> TokenPair:
        return TokenPair(
            access_token=self._encode(session, ACCESS, self.access_ttl_s),
            refresh_token=self._encode(session, REFRESH, self.refresh_ttl_s),
            expires_in=self.access_ttl_s,
            refresh_expires_in=self.refresh_ttl_s,
        )

    def _decode(self, token: str, kind: str) -> tuple[Session, str]:
        return self._decode_claims(token, kind)[:2]

    def _decode_claims(self, token: str, kind: str) -> tuple[Session, str, float]:
        claims = self._verified_claims(token)
        mall_id, openid, token_id = claims.get("mall"), claims.get("sub"), claims.get("jti")
        if claims.get("typ") != kind or not all(
            isinstance(v, str) and v for v in (mall_id, openid, token_id)
        ):
            raise invalid_session("the session token is not valid")
        member_id, unionid = claims.get("mid"), claims.get("uid")
        session = Session(
            str(mall_id),
            str(openid),
            member_id if isinstance(member_id, str) and member_id else None,
            unionid if isinstance(unionid, str) and unionid else None,
        )
        return session, str(token_id), float(claims["exp"])

    def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(token, self._key, algorithms=[ALGORITHM]).claims
            # The token's exp is checked against our clock too (below), with no leeway.
            self._claims.validate(claims)
        except ExpiredTokenError:
            raise invalid_session("the session has expired") from None
        except (JoseError, ValueError):
            raise invalid_session("the session token is not valid") from None
        return claims

    def read_access(self, token: str) -> Session:
        remembered = self._verified.get(token)
        if remembered is not None:
            session, expires = remembered
            if self._clock() < expires:
                return session
            del self._verified[token]
            raise invalid_session("the session has expired")
        session, _, expires = self._decode_claims(token, ACCESS)
        if self._clock() >= expires:
            raise invalid_session("the session has expired")
        self._verified[token] = (session, expires)
        if len(self._verified) > self._remember:
            self._verified.popitem(last=False)
        return session

    def read_refresh(self, token: str) -> tuple[Session, str]:
        """The session and the refresh token's id (for rotation)."""
        return self._decode(token, REFRESH)
