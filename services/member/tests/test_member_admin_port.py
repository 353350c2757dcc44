"""With ADMIN_GRPC_PORT set, member's DirectoryService (malls, stores, IssueCredential) is
served on the admin port only: the main port, which the gateway reaches, does not know it; and
MemberService's ops RPCs (MergeMembers, ...) are refused there and taken on the admin port."""

from __future__ import annotations

import uuid

import grpc
import pytest
from kit.cli import serving
from kit.migrations import migrate
from mall.member.v1 import member_service_pb2, member_service_pb2_grpc
from mall_testing.embedded import free_port
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS, bootstrap
from member.config import Settings


async def test_the_directory_is_served_on_the_admin_port_only(
    fresh_database: FreshDatabase, nats_url: str
) -> None:
    url = await fresh_database("member_admin_port")
    await migrate(url, MIGRATIONS)
    admin_port = free_port()
    settings = Settings(
        database_url=url,
        nats_url=nats_url,
        grpc_port=0,
        admin_grpc_port=admin_port,
        log_level="warning",
    )
    tag = uuid.uuid4().hex[:10]
    mall = member_service_pb2.CreateMallRequest(
        mall_id=f"mall-{tag}",
        name=f"Mall {tag}",
        appid=f"wx{tag}",
        brand_id="brand",
        mchid="1900000109",
        time_zone="Asia/Shanghai",
    )
    issue = member_service_pb2.IssueCredentialRequest(mall_id=mall.mall_id, crm=True, label="x")
    async with bootstrap(settings) as roles, serving(roles) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            directory = member_service_pb2_grpc.DirectoryServiceStub(channel)
            for call in (
                directory.CreateMall(mall, timeout=5),
                directory.IssueCredential(issue, timeout=5),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            # The gateway's API stays on the main port.
            members = member_service_pb2_grpc.MemberServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await members.GetMember(
                    member_service_pb2.GetMemberRequest(mall_id=mall.mall_id, member_id="m-0"),
                    timeout=5,
                )
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            # MemberService's ops RPCs are refused there, before the request is looked at.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await members.MergeMembers(member_service_pb2.MergeMembersRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

        async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as channel:
            directory = member_service_pb2_grpc.DirectoryServiceStub(channel)
            await directory.CreateMall(mall, timeout=5)
            issued = await directory.IssueCredential(issue, timeout=5)
            assert issued.secret
            got = await directory.GetMall(
                member_service_pb2.GetMallRequest(mall_id=mall.mall_id), timeout=5
            )
            assert got.mall.name == mall.name
            # ... and taken on the admin port (refused here for what the request lacks).
            members = member_service_pb2_grpc.MemberServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await members.MergeMembers(member_service_pb2.MergeMembersRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
