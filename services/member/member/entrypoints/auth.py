"""Who is calling member's gRPC API: the server's ``authenticate`` hook.

Tenant-facing RPCs (IdentifyMember, ReportPayment, RegisterGuide, ListGuideMembers) require
``x-mall-credential: <credential_id>.<secret>`` of a valid, unrevoked tenant credential; the
servicer then checks that the request's mall and store (or guide) are the tenant's own. A
caller presenting a tenant or car-park credential on any other RPC is refused, so a POS
cannot browse members. CrmService RPCs require a CRM credential (mall-level, issued with
``crm``) and may only name its mall.

MergeMembers, ListMembers and SetMemberTags are ops calls: taken only on the admin port
(ADMIN_GRPC_PORT, reached by port-forward; ``kit.grpc_server.ops_allowed``), or on the one
port when there is no admin port (dev, tests). DirectoryService is served on the admin port
alone when there is one. The other RPCs (GetMember, GetMemberByIdentity, IssueCheckoutCode,
…) are the gateway's, open to the callers the network policy admits to the main port.

Verified credentials are remembered in-process for ``credential_cache_s``
(``kit.credentials.VerifiedCallers``) so the scrypt cost is paid once per credential and replica,
not per call: a revoked credential keeps working on a replica for at most that long.
"""

from __future__ import annotations

import contextvars

import asyncpg
from kit.credentials import CREDENTIAL_HEADER, VerifiedCallers
from kit.errors import Forbidden, Unauthenticated
from kit.grpc_server import Metadata, require_ops

from member.domain.credentials import Principal
from member.service_layer.credentials import verify_credential

TENANT_METHODS = frozenset(
    {
        "/mall.member.v1.MemberService/IdentifyMember",
        "/mall.member.v1.MemberService/ReportPayment",
        "/mall.member.v1.MemberService/RegisterGuide",
        "/mall.member.v1.MemberService/ListGuideMembers",
    }
)
CRM_SERVICE = "/mall.member.v1.CrmService/"
OPS_METHODS = frozenset(
    f"/mall.member.v1.MemberService/{m}" for m in ("MergeMembers", "ListMembers", "SetMemberTags")
)

_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "member_caller", default=None
)


def tenant_caller() -> Principal:
    """The tenant behind the current call; refuses if none was authenticated (a servicer
    served without the hook stays closed)."""
    caller = _caller.get()
    if caller is None or not caller.tenant_id:
        raise Unauthenticated("invalid_credential", "a tenant credential is required")
    return caller


def crm_caller(mall_id: str) -> Principal:
    """The CRM credential behind the current call, which must be for ``mall_id``."""
    caller = _caller.get()
    if caller is None or caller.scope != "crm":
        raise Unauthenticated("invalid_credential", "a CRM credential is required")
    if mall_id != caller.mall_id:
        raise Forbidden("mall_not_yours", f"the credential is not for mall {mall_id}")
    return caller


class CredentialAuthenticator:
    """``authenticate(method, metadata)`` for the gRPC server; returns log-context fields."""

    def __init__(self, pool: asyncpg.Pool, *, cache_s: float = 30.0) -> None:
        self._pool = pool
        self._verified: VerifiedCallers[Principal] = VerifiedCallers(cache_s=cache_s)

    async def __call__(self, method: str, metadata: Metadata) -> dict[str, str]:
        _caller.set(None)
        presented = metadata.get(CREDENTIAL_HEADER, "")
        if method.startswith(CRM_SERVICE):
            if not presented:
                raise Unauthenticated("invalid_credential", f"{CREDENTIAL_HEADER} is required")
            crm = await self._verify(presented)
            if crm.scope != "crm":
                raise Forbidden("not_a_crm_credential", f"{method} needs a CRM credential")
            _caller.set(crm)
            return {"mall_id": crm.mall_id, "credential_id": crm.credential_id}
        if method not in TENANT_METHODS:
            if presented:
                raise Forbidden("rpc_not_for_tenants", f"{method} is not open to tenant callers")
            if method in OPS_METHODS:
                require_ops(method)
            return {}
        if not presented:
            raise Unauthenticated("invalid_credential", f"{CREDENTIAL_HEADER} is required")
        principal = await self._verify(presented)
        if not principal.tenant_id:
            raise Forbidden("not_a_tenant_credential", f"{method} needs a tenant credential")
        _caller.set(principal)
        return {
            "mall_id": principal.mall_id,
            "tenant_id": principal.tenant_id,
            "credential_id": principal.credential_id,
        }

    async def _verify(self, presented: str) -> Principal:
        return await self._verified.get(presented, self._check)

    async def _check(self, presented: str) -> Principal:
        async with self._pool.acquire() as conn:
            return await verify_credential(conn, presented)
