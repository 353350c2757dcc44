"""Who is calling coupons' gRPC APIs: the server's ``authenticate`` hook.

RedeemCoupon(s), CreateCommitmentOffer and ApplyCommitmentDiscount are for tenant POS only:
``x-mall-credential: <credential_id>.<secret>`` of a valid tenant credential, checked against
the process's copy of the directory (``kit.directory``, mirrored from member's bucket; calls
are refused as UNAVAILABLE until it is loaded). CreateStock, PutPostPaymentRule,
CreateClaimCode and GetStockStats take a tenant credential (then they act on that tenant's own
stocks and stores only) or none: an ops call, taken only on the admin port (ADMIN_GRPC_PORT,
reached by port-forward; ``kit.grpc_server.ops_allowed``), or on the one port when there is
no admin port (dev, tests); on the main port with an admin port such a call is refused, so
the gateway's access to that port is no access to the stocks. CouponsService's gateway RPCs
(claim, list) refuse a tenant credential, so a POS cannot claim or browse wallets;
CommitmentService's gateway RPCs ignore it.

A verified credential is remembered per process for ``cache_s``
(``kit.credentials.VerifiedCallers``: the scrypt cost is paid once per credential, off the event
loop, however many calls present it at once); a revoked one stops working within that time.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass

from kit.credentials import CREDENTIAL_HEADER, VerifiedCallers, parse_presented, verify_secret
from kit.directory import Directory
from kit.errors import Forbidden, Unauthenticated, Unavailable
from kit.grpc_server import Metadata, require_ops

_COUPONS = "/mall.coupons.v1.CouponsService/"
_COMMITMENTS = "/mall.coupons.v1.CommitmentService/"
TENANT_ONLY = frozenset(
    {
        _COUPONS + "RedeemCoupon",
        _COUPONS + "RedeemCoupons",
        _COMMITMENTS + "CreateCommitmentOffer",
        _COMMITMENTS + "ApplyCommitmentDiscount",
    }
)
TENANT_OR_OPS = frozenset(
    _COUPONS + m for m in ("CreateStock", "PutPostPaymentRule", "CreateClaimCode", "GetStockStats")
)


@dataclass(frozen=True)
class Caller:
    """A verified tenant caller."""

    mall_id: str
    tenant_id: str
    credential_id: str


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "coupons_caller", default=None
)


def current_caller() -> Caller | None:
    """The tenant behind the current call, or None for an ops call (no credential)."""
    return _caller.get()


def tenant_caller() -> Caller:
    caller = _caller.get()
    if caller is None:
        raise Unauthenticated("invalid_credential", "a tenant credential is required")
    return caller


def still_valid(directory: Directory, caller: Caller) -> None:
    """A caller checked when its stream opened is still who it was: its credential has not
    been revoked since (read from the directory copy at once, not through the cache)."""
    entry = directory.credential(caller.credential_id)
    if entry is None or entry.revoked:
        raise Unauthenticated("invalid_credential", "the credential was revoked")


class CredentialAuthenticator:
    """``authenticate(method, metadata)`` for the gRPC server; returns log-context fields."""

    def __init__(self, directory: Directory, *, cache_s: float = 30.0) -> None:
        self._directory = directory
        self._verified: VerifiedCallers[Caller] = VerifiedCallers(cache_s=cache_s)

    async def __call__(self, method: str, metadata: Metadata) -> dict[str, str]:
        _caller.set(None)
        presented = metadata.get(CREDENTIAL_HEADER, "")
        if method not in TENANT_ONLY and method not in TENANT_OR_OPS:
            if presented and method.startswith(_COUPONS):
                raise Forbidden("rpc_not_for_tenants", f"{method} is not open to tenant callers")
            return {}
        if not presented:
            if method in TENANT_ONLY:
                raise Unauthenticated("invalid_credential", f"{CREDENTIAL_HEADER} is required")
            require_ops(
                method, f"{method} needs a tenant credential; ops calls go to the admin port"
            )
            return {}
        if not self._directory.ready:
            raise Unavailable("directory_not_ready", "the directory is loading; retry shortly")
        caller = await self.verify(presented)
        _caller.set(caller)
        return {"mall_id": caller.mall_id, "tenant_id": caller.tenant_id}

    async def verify(self, presented: str) -> Caller:
        return await self._verified.get(presented, self._check)

    async def _check(self, presented: str) -> Caller:
        credential_id, secret = parse_presented(presented)
        entry = self._directory.credential(credential_id)
        if (
            entry is None
            or entry.revoked
            or not await asyncio.to_thread(verify_secret, secret, entry.secret_hash)
        ):
            raise Unauthenticated("invalid_credential", "unknown, revoked or wrong credential")
        if not entry.tenant_id:
            raise Forbidden("not_a_tenant_credential", "this RPC needs a tenant credential")
        return Caller(entry.mall_id, entry.tenant_id, entry.credential_id)
