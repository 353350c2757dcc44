"""gRPC servicers: translate requests to service-layer calls and results to messages."""

from __future__ import annotations

from typing import Any

import asyncpg
from kit.errors import InvalidInput, NotFound
from kit.proto import timestamp, to_datetime
from mall.common.v1 import common_pb2
from mall.member.v1 import directory_pb2, member_pb2, member_service_pb2, member_service_pb2_grpc

from member.adapters import profiles, repository
from member.adapters.credentials import credential_message
from member.adapters.events import mall_message
from member.adapters.join_events import tier_message
from member.domain.checkout import CheckoutPolicy
from member.domain.model import JoinChannel, Member, PaymentSource
from member.entrypoints.auth import tenant_caller
from member.entrypoints.grpc_guides import GuideRpcs
from member.entrypoints.grpc_identity import IDENTITY_KINDS, IdentityRpcs
from member.entrypoints.grpc_receipts import ReceiptRpcs
from member.entrypoints.member_messages import profile_message
from member.service_layer import checkout, credentials, directory, joining, pos, tags, tiers

_IDENTITY_KINDS = IDENTITY_KINDS
_POS_SOURCES = {
    common_pb2.PAYMENT_SOURCE_POS_CASH: PaymentSource.POS_CASH,
    common_pb2.PAYMENT_SOURCE_POS_CARD: PaymentSource.POS_CARD,
    common_pb2.PAYMENT_SOURCE_POS_OTHER: PaymentSource.POS_OTHER,
    common_pb2.PAYMENT_SOURCE_RECEIPT: PaymentSource.RECEIPT,
}
_JOIN_CHANNELS = {member_pb2.JOIN_CHANNEL_MINI_PROGRAM: JoinChannel.MINI_PROGRAM}


def _member(m: Member) -> member_pb2.Member:
    return member_pb2.Member(
        member_id=m.member_id,
        mall_id=m.mall_id,
        tier_code=m.tier_code,
        status=member_pb2.MEMBER_STATUS_ACTIVE,
    )


def _required(**fields: str) -> None:
    missing = [name for name, value in fields.items() if not value]
    if missing:
        raise InvalidInput("missing_field", f"required: {', '.join(missing)}")


class MemberServicer(
    IdentityRpcs, GuideRpcs, ReceiptRpcs, member_service_pb2_grpc.MemberServiceServicer
):
    def __init__(self, pool: asyncpg.Pool, checkout_policy: CheckoutPolicy | None = None) -> None:
        self._pool = pool
        self._checkout = checkout_policy or CheckoutPolicy()

    # -- identification at checkout and POS payments (tenant-facing: see entrypoints/auth) --

    async def IssueCheckoutCode(
        self, request: member_service_pb2.IssueCheckoutCodeRequest, context: Any
    ) -> member_service_pb2.IssueCheckoutCodeResponse:
        _required(mall_id=request.mall_id, member_id=request.member_id)
        async with self._pool.acquire() as conn, conn.transaction():
            issued = await checkout.issue_checkout_code(
                conn, self._checkout, request.mall_id, request.member_id
            )
        return member_service_pb2.IssueCheckoutCodeResponse(
            code=issued.code, expires_at=timestamp(issued.expires_at)
        )

    async def IdentifyMember(
        self, request: member_service_pb2.IdentifyMemberRequest, context: Any
    ) -> member_service_pb2.IdentifyMemberResponse:
        caller = tenant_caller()
        _required(mall_id=request.mall_id, store_id=request.store_id)
        key = request.WhichOneof("key")
        if key == "checkout_code":
            async with self._pool.acquire() as conn, conn.transaction():
                found = await checkout.identify_by_code(
                    conn,
                    caller,
                    mall_id=request.mall_id,
                    store_id=request.store_id,
                    code=request.checkout_code,
                )
        elif key == "identity":
            kind = _IDENTITY_KINDS.get(request.identity.identity_type)
            if kind is None or not request.identity.value:
                raise InvalidInput("invalid_identity", "identity needs a type and a value")
            async with self._pool.acquire() as conn:
                found = await checkout.identify_by_identity(
                    conn,
                    caller,
                    mall_id=request.mall_id,
                    store_id=request.store_id,
                    kind=kind,
                    value=request.identity.value,
                )
        else:
            raise InvalidInput("missing_field", "required: checkout_code or identity")
        async with self._pool.acquire() as conn:
            ladder, lines = await tiers.tier_card(conn, request.mall_id, found.tier_code)
        return member_service_pb2.IdentifyMemberResponse(
            member=_member(found), tier=tier_message(ladder, found.tier_code, lines)
        )

    async def ReportPayment(
        self, request: member_service_pb2.ReportPaymentRequest, context: Any
    ) -> member_service_pb2.ReportPaymentResponse:
        caller = tenant_caller()
        _required(
            mall_id=request.mall_id,
            store_id=request.store_id,
            member_id=request.member_id,
            receipt_no=request.receipt_no,
        )
        if not request.HasField("paid_at"):
            raise InvalidInput("missing_field", "required: paid_at")
        source = _POS_SOURCES.get(request.source)
        if source is None:
            raise InvalidInput(
                "invalid_source", "source must be POS_CASH, POS_CARD, POS_OTHER or RECEIPT"
            )
        async with self._pool.acquire() as conn, conn.transaction():
            transaction_id, duplicate = await pos.report_payment(
                conn,
                caller,
                self._checkout,
                mall_id=request.mall_id,
                store_id=request.store_id,
                member_id=request.member_id,
                receipt_no=request.receipt_no,
                amount_fen=request.amount_fen,
                source=source,
                paid_at=to_datetime(request.paid_at),
            )
        return member_service_pb2.ReportPaymentResponse(
            transaction_id=transaction_id, duplicate=duplicate
        )

    # -- lookups for the gateway and ops --

    async def GetMember(
        self, request: member_service_pb2.GetMemberRequest, context: Any
    ) -> member_service_pb2.GetMemberResponse:
        _required(mall_id=request.mall_id, member_id=request.member_id)
        async with self._pool.acquire() as conn:
            found = await repository.get_member(conn, request.mall_id, request.member_id)
            card = found and await profiles.profile(conn, request.mall_id, found.member_id)
        if not card:
            raise NotFound("member_not_found", "no such member in this mall")
        return member_service_pb2.GetMemberResponse(member=profile_message(card))

    async def GetMemberByIdentity(
        self, request: member_service_pb2.GetMemberByIdentityRequest, context: Any
    ) -> member_service_pb2.GetMemberByIdentityResponse:
        _required(mall_id=request.mall_id, identity=request.identity.value)
        kind = _IDENTITY_KINDS.get(request.identity.identity_type)
        if kind is None:
            raise InvalidInput("invalid_identity_type", "identity_type is required")
        async with self._pool.acquire() as conn:
            found = await repository.member_by_identity(
                conn, request.mall_id, kind, request.identity.value
            )
            card = found and await profiles.profile(conn, request.mall_id, found.member_id)
        if not card:
            raise NotFound("member_not_found", "no member with that identity in this mall")
        return member_service_pb2.GetMemberByIdentityResponse(member=profile_message(card))

    # -- joining, tags and the member export (gateway, ops) --

    async def JoinMember(
        self, request: member_service_pb2.JoinMemberRequest, context: Any
    ) -> member_service_pb2.JoinMemberResponse:
        if request.identity.identity_type != member_pb2.IDENTITY_TYPE_OPENID:
            raise InvalidInput("invalid_identity_type", "join with the shopper's OPENID")
        channel = _JOIN_CHANNELS.get(request.channel)
        if channel is None:
            raise InvalidInput("unsupported_channel", "JoinMember joins from the mini-program")
        async with self._pool.acquire() as conn, conn.transaction():
            joined = await joining.join_member(
                conn,
                mall_id=request.mall_id,
                openid=request.identity.value,
                channel=channel,
                phone=request.phone,
            )
        return member_service_pb2.JoinMemberResponse(
            member=profile_message(joined.member), created=joined.created
        )

    async def SetMemberTags(
        self, request: member_service_pb2.SetMemberTagsRequest, context: Any
    ) -> member_service_pb2.SetMemberTagsResponse:
        _required(mall_id=request.mall_id, member_id=request.member_id)
        async with self._pool.acquire() as conn, conn.transaction():
            found = await tags.set_member_tags(
                conn, request.mall_id, request.member_id, list(request.tags)
            )
        return member_service_pb2.SetMemberTagsResponse(member=profile_message(found))

    async def ListMembers(
        self, request: member_service_pb2.ListMembersRequest, context: Any
    ) -> member_service_pb2.ListMembersResponse:
        async with self._pool.acquire() as conn:
            page, next_token = await tags.list_members(
                conn,
                request.mall_id,
                page_size=request.page.page_size,
                page_token=request.page.page_token,
                tier_code=request.tier_code,
                tag=request.tag,
            )
        return member_service_pb2.ListMembersResponse(
            members=[profile_message(m) for m in page],
            page=common_pb2.PageResponse(next_page_token=next_token),
        )


class DirectoryServicer(member_service_pb2_grpc.DirectoryServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def IssueCredential(
        self, request: member_service_pb2.IssueCredentialRequest, context: Any
    ) -> member_service_pb2.IssueCredentialResponse:
        _required(mall_id=request.mall_id)
        async with self._pool.acquire() as conn, conn.transaction():
            row, secret = await credentials.issue_credential(
                conn,
                mall_id=request.mall_id,
                tenant_id=request.tenant_id,
                car_park_id=request.car_park_id,
                crm=request.crm,
                label=request.label,
            )
        return member_service_pb2.IssueCredentialResponse(
            credential=credential_message(row, with_hash=False), secret=secret
        )

    async def RevokeCredential(
        self, request: member_service_pb2.RevokeCredentialRequest, context: Any
    ) -> member_service_pb2.RevokeCredentialResponse:
        _required(mall_id=request.mall_id, credential_id=request.credential_id)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await credentials.revoke_credential(conn, request.mall_id, request.credential_id)
        return member_service_pb2.RevokeCredentialResponse(
            credential=credential_message(row, with_hash=False)
        )

    async def CreateMall(
        self, request: member_service_pb2.CreateMallRequest, context: Any
    ) -> member_service_pb2.CreateMallResponse:
        async with self._pool.acquire() as conn, conn.transaction():
            mall = await directory.create_mall(
                conn,
                mall_id=request.mall_id,
                name=request.name,
                appid=request.appid,
                brand_id=request.brand_id,
                mchid=request.mchid,
                time_zone=request.time_zone,
            )
        return member_service_pb2.CreateMallResponse(mall=mall_message(mall))

    async def GetMall(
        self, request: member_service_pb2.GetMallRequest, context: Any
    ) -> member_service_pb2.GetMallResponse:
        async with self._pool.acquire() as conn:
            mall = await repository.get_mall(conn, request.mall_id)
        if mall is None:
            raise NotFound("unknown_mall", f"no mall {request.mall_id}")
        return member_service_pb2.GetMallResponse(mall=mall_message(mall))

    async def ListMalls(
        self, request: member_service_pb2.ListMallsRequest, context: Any
    ) -> member_service_pb2.ListMallsResponse:
        async with self._pool.acquire() as conn:
            malls = await repository.list_malls(conn)
        return member_service_pb2.ListMallsResponse(malls=[mall_message(m) for m in malls])

    async def CreateTenant(
        self, request: member_service_pb2.CreateTenantRequest, context: Any
    ) -> member_service_pb2.CreateTenantResponse:
        async with self._pool.acquire() as conn, conn.transaction():
            await directory.create_tenant(
                conn,
                mall_id=request.mall_id,
                tenant_id=request.tenant_id,
                name=request.name,
                category=request.category,
            )
        return member_service_pb2.CreateTenantResponse(
            tenant=directory_pb2.Tenant(
                mall_id=request.mall_id,
                tenant_id=request.tenant_id,
                name=request.name,
                category=request.category,
            )
        )

    async def CreateCarPark(
        self, request: member_service_pb2.CreateCarParkRequest, context: Any
    ) -> member_service_pb2.CreateCarParkResponse:
        async with self._pool.acquire() as conn, conn.transaction():
            car_park = await directory.create_car_park(
                conn,
                mall_id=request.mall_id,
                car_park_id=request.car_park_id,
                name=request.name,
            )
        return member_service_pb2.CreateCarParkResponse(car_park=car_park)

    async def CreateStore(
        self, request: member_service_pb2.CreateStoreRequest, context: Any
    ) -> member_service_pb2.CreateStoreResponse:
        async with self._pool.acquire() as conn, conn.transaction():
            await directory.create_store(
                conn,
                mall_id=request.mall_id,
                tenant_id=request.tenant_id,
                store_id=request.store_id,
                name=request.name,
                mchid=request.mchid,
                sub_mchid=request.sub_mchid,
                shop_number=request.shop_number,
            )
        return member_service_pb2.CreateStoreResponse(
            store=directory_pb2.Store(
                mall_id=request.mall_id,
                tenant_id=request.tenant_id,
                store_id=request.store_id,
                name=request.name,
                mchid=request.mchid,
                sub_mchid=request.sub_mchid,
                shop_number=request.shop_number,
            )
        )
