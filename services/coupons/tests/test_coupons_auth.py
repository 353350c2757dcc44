"""coupons' credential check: one hook for both APIs, on the process's copy of the directory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from coupons.entrypoints.auth import CredentialAuthenticator, current_caller
from kit.credentials import hash_secret
from kit.directory import Directory
from kit.errors import Forbidden, Unauthenticated
from kit.proto import timestamp
from mall.member.v1 import directory_pb2

COMMITMENTS = "/mall.coupons.v1.CommitmentService/"
REDEEM = "/mall.coupons.v1.CouponsService/RedeemCoupon"
APPLY = COMMITMENTS + "ApplyCommitmentDiscount"
OFFER = COMMITMENTS + "CreateCommitmentOffer"


def entry(credential: directory_pb2.Credential) -> tuple[str, bytes]:
    return f"credential.{credential.mall_id}.{credential.credential_id}", (
        credential.SerializeToString()
    )


async def test_the_commitment_tenant_rpcs_take_the_tenants_credential_from_the_copy() -> None:
    directory = Directory()
    auth = CredentialAuthenticator(directory, cache_s=0)  # no cache: every call checks
    secret, credential_id = uuid.uuid4().hex, f"cred-{uuid.uuid4().hex[:8]}"
    credential = directory_pb2.Credential(
        mall_id="mall-a",
        credential_id=credential_id,
        tenant_id="tea",
        secret_hash=hash_secret(secret),
    )
    presented = {"x-mall-credential": f"{credential_id}.{secret}"}

    for method in (APPLY, OFFER):
        with pytest.raises(Unauthenticated):
            await auth(method, {})
        with pytest.raises(Unauthenticated):  # not in the copy (yet)
            await auth(method, presented)

    directory.apply(*entry(credential))
    for method in (APPLY, OFFER, REDEEM):
        assert await auth(method, presented) == {"mall_id": "mall-a", "tenant_id": "tea"}
        caller = current_caller()
        assert caller is not None
        assert (caller.mall_id, caller.tenant_id) == ("mall-a", "tea")

    # The gateway's commitment RPCs need no credential (and ignore one).
    assert await auth(COMMITMENTS + "GetCommitmentCard", presented) == {}
    assert current_caller() is None

    credential.revoked_at.CopyFrom(timestamp(datetime.now(UTC)))
    directory.apply(*entry(credential))
    with pytest.raises(Unauthenticated):
        await auth(APPLY, presented)


async def test_a_car_park_credential_does_not_open_the_tenant_rpcs() -> None:
    directory = Directory()
    auth = CredentialAuthenticator(directory, cache_s=0)
    secret = uuid.uuid4().hex
    directory.apply(
        *entry(
            directory_pb2.Credential(
                mall_id="mall-a",
                credential_id="cred-gate",
                car_park_id="p1",
                secret_hash=hash_secret(secret),
            )
        )
    )
    with pytest.raises(Forbidden) as caught:
        await auth(APPLY, {"x-mall-credential": f"cred-gate.{secret}"})
    assert caught.value.code == "not_a_tenant_credential"
