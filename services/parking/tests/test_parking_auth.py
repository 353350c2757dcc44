"""The car-park credential check on the process's copy of member's DIRECTORY bucket."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from kit.credentials import hash_secret
from kit.directory import Directory
from kit.errors import Forbidden, Unauthenticated
from kit.proto import timestamp
from mall.member.v1 import directory_pb2
from parking.entrypoints.auth import CarParkAuthenticator, car_park_caller

QUOTE = "/mall.parking.v1.CarParkService/QuoteExit"


def entry(credential: directory_pb2.Credential) -> tuple[str, bytes]:
    key = f"credential.{credential.mall_id}.{credential.credential_id}"
    return key, credential.SerializeToString()


async def test_a_revoked_or_deleted_credential_stops_working() -> None:
    directory = Directory()
    auth = CarParkAuthenticator(directory, cache_s=0)  # no cache: every call checks
    secret, credential_id = uuid.uuid4().hex, f"cred-{uuid.uuid4().hex[:8]}"
    credential = directory_pb2.Credential(
        mall_id="mall-a",
        credential_id=credential_id,
        car_park_id="p1",
        secret_hash=hash_secret(secret),
    )
    presented = {"x-mall-credential": f"{credential_id}.{secret}"}
    directory.apply(*entry(credential))

    fields = await auth(QUOTE, presented)
    assert fields == {"mall_id": "mall-a", "car_park_id": "p1", "credential_id": credential_id}
    assert car_park_caller("mall-a", "p1").credential_id == credential_id
    with pytest.raises(Forbidden):
        car_park_caller("mall-a", "p2")

    credential.revoked_at.CopyFrom(timestamp(datetime.now(UTC)))
    directory.apply(*entry(credential))
    with pytest.raises(Unauthenticated):
        await auth(QUOTE, presented)

    directory.apply(entry(credential)[0], None)
    with pytest.raises(Unauthenticated):
        await auth(QUOTE, presented)


async def test_a_tenant_credential_does_not_open_the_gates() -> None:
    directory = Directory()
    auth = CarParkAuthenticator(directory, cache_s=0)
    secret = uuid.uuid4().hex
    directory.apply(
        *entry(
            directory_pb2.Credential(
                mall_id="mall-a",
                credential_id="cred-pos",
                tenant_id="coffee-corner",
                secret_hash=hash_secret(secret),
            )
        )
    )

    with pytest.raises(Forbidden) as caught:
        await auth(QUOTE, {"x-mall-credential": f"cred-pos.{secret}"})
    assert caught.value.code == "not_a_car_park_credential"
