"""Joining on real PostgreSQL (and the gRPC API over NATS-backed member): pay-to-join only
for shoppers who authorised, pending payments attributed once when they authorise or join,
mini-program joins with phone and consent, tags and the member export."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from eventbus.consumer import Delivery
from kit.cli import serving
from kit.errors import Conflict, InvalidInput, NotFound
from kit.grpc_errors import from_rpc_error
from kit.migrations import migrate
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.member.v1 import events_pb2, member_pb2, member_service_pb2, member_service_pb2_grpc
from mall.payments.v1 import events_pb2 as payments_pb2
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS, bootstrap
from member.config import Settings
from member.domain.joining import JoinOnPayment, JoinPolicy, mask_phone, normalise_phone
from member.domain.model import Attribution, CapturedPayment, JoinChannel
from member.domain.tags import normalise_tags
from member.entrypoints.consumers import on_authorization_changed
from member.service_layer import directory, joining
from member.service_layer.payments import attribute_payments

JOINED = "member.member.joined"
ATTRIBUTED = "member.payment.attributed"


@dataclass(frozen=True)
class Shop:
    mall_id: str
    appid: str
    shop_number: str


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def member_db(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("member")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture
async def conn(member_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(member_db)
    try:
        yield connection
    finally:
        await connection.close()


async def open_shop(conn: asyncpg.Connection, tag: str, policy: JoinPolicy | None) -> Shop:
    shop = Shop(f"mall-{tag}", f"wx{tag}", f"SHOP-{tag}")
    async with conn.transaction():
        await directory.create_mall(
            conn,
            mall_id=shop.mall_id,
            name=f"Mall {tag}",
            appid=shop.appid,
            brand_id="brand",
            mchid="1900000109",
            time_zone="Asia/Shanghai",
        )
        await directory.create_tenant(
            conn, mall_id=shop.mall_id, tenant_id="coffee", name="Coffee", category="food"
        )
        await directory.create_store(
            conn,
            mall_id=shop.mall_id,
            tenant_id="coffee",
            store_id="coffee-l1",
            name="Coffee L1",
            mchid="1900000109",
            sub_mchid="",
            shop_number=shop.shop_number,
        )
        if policy is not None:
            await joining.set_join_policy(conn, shop.mall_id, policy)
    return shop


@pytest.fixture
async def gated(conn: asyncpg.Connection, unique_id: str) -> Shop:
    """A mall that joins only payers who authorised (7-day window)."""
    return await open_shop(conn, unique_id, JoinPolicy(JoinOnPayment.AUTHORIZED, 7))


def captured(
    shop: Shop, openid: str, *, amount_fen: int = 10_000, age_days: float = 0
) -> CapturedPayment:
    return CapturedPayment(
        event_id=str(uuid.uuid4()),
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        appid=shop.appid,
        mchid="1900000109",
        shop_number=shop.shop_number,
        openid=openid,
        amount_fen=amount_fen,
        paid_at=datetime.now(UTC) - timedelta(days=age_days),
    )


async def pay(conn: asyncpg.Connection, *payments: CapturedPayment) -> list[Attribution]:
    async with conn.transaction():
        return await attribute_payments(conn, [(p, {"x-correlation-id": "c1"}) for p in payments])


def authorization(shop: Shop, openid: str) -> Delivery:
    msg = payments_pb2.AuthorizationChanged(
        event_id=str(uuid.uuid4()),
        appid=shop.appid,
        mchid="1900000109",
        openid=openid,
        auth_type=payments_pb2.AUTH_TYPE_REGISTERED_AND_AUTHORIZATION_MODE,
        changed_at=timestamp(datetime.now(UTC)),
    )
    return Delivery(
        event_id=msg.event_id,
        subject="payments.authorization.changed",
        data=msg.SerializeToString(),
        headers={"x-correlation-id": "c2"},
    )


async def authorise(conn: asyncpg.Connection, shop: Shop, openid: str) -> None:
    async with conn.transaction():
        await on_authorization_changed(conn, [authorization(shop, openid)])


async def outbox(conn: asyncpg.Connection, mall_id: str) -> list[tuple[str, bytes]]:
    rows = await conn.fetch(
        """SELECT subject, payload FROM outbox
            WHERE mall_id = $1 AND subject NOT LIKE 'member.directory.%' ORDER BY seq""",
        mall_id,
    )
    return [(r["subject"], r["payload"]) for r in rows]


async def count(conn: asyncpg.Connection, table: str, mall_id: str) -> int:
    assert table in {"members", "payments", "pending_payments", "identities", "consents"}
    value: int = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE mall_id = $1", mall_id)
    return value


# -- domain ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["13800138000", "+8613800138000", "138 0013 8000", "0086-13800138000"]
)
def test_a_mainland_mobile_is_kept_as_e164(raw: str) -> None:
    assert normalise_phone(raw) == "+8613800138000"
    assert mask_phone("+8613800138000") == "138****8000"


@pytest.mark.parametrize("raw", ["", "12800138000", "1380013800", "+14155550100", "phone"])
def test_other_phones_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalise_phone(raw)
    assert caught.value.code == "invalid_phone"


def test_tags_are_distinct_slugs_at_most_twenty() -> None:
    assert normalise_tags(["vip", "sports", "vip"]) == ("sports", "vip")
    for bad, code in ((["VIP"], "invalid_tag"), ([f"t{i}" for i in range(21)], "too_many_tags")):
        with pytest.raises(InvalidInput) as caught:
            normalise_tags(bad)
        assert caught.value.code == code


# -- pay-to-join only when authorised --------------------------------------------------------


async def test_an_unauthorised_payer_is_held_pending_without_an_event(
    conn: asyncpg.Connection, gated: Shop
) -> None:
    assert await pay(conn, captured(gated, "o-shy")) == []

    assert await count(conn, "pending_payments", gated.mall_id) == 1
    assert await count(conn, "members", gated.mall_id) == 0
    assert await count(conn, "payments", gated.mall_id) == 0
    assert await outbox(conn, gated.mall_id) == []


async def test_an_authorised_payer_joins_on_payment(conn: asyncpg.Connection, gated: Shop) -> None:
    await authorise(conn, gated, "o-keen")

    [done] = await pay(conn, captured(gated, "o-keen"))

    assert done.member.joined_now
    assert [s for s, _ in await outbox(conn, gated.mall_id)] == [JOINED, ATTRIBUTED]


async def test_authorising_attributes_pending_payments_once_in_order(
    conn: asyncpg.Connection, gated: Shop
) -> None:
    older = captured(gated, "o-later", amount_fen=1_000, age_days=2)
    newer = captured(gated, "o-later", amount_fen=2_000, age_days=1)
    await pay(conn, newer, older)

    await authorise(conn, gated, "o-later")
    await authorise(conn, gated, "o-later")  # a repeat changes nothing

    events = await outbox(conn, gated.mall_id)
    assert [s for s, _ in events] == [JOINED, ATTRIBUTED, ATTRIBUTED]
    attributed = [events_pb2.PaymentAttributed.FromString(p) for s, p in events if s == ATTRIBUTED]
    assert [a.transaction_id for a in attributed] == [older.transaction_id, newer.transaction_id]
    assert events_pb2.MemberJoined.FromString(events[0][1]).channel == (
        member_pb2.JOIN_CHANNEL_PAYMENT
    )
    assert await count(conn, "payments", gated.mall_id) == 2
    assert await count(conn, "pending_payments", gated.mall_id) == 0
    # Redelivery of the payment after it was attributed records nothing new.
    assert await pay(conn, older) == []
    assert len(await outbox(conn, gated.mall_id)) == 3


async def test_a_pending_payment_older_than_the_window_is_not_attributed(
    conn: asyncpg.Connection, gated: Shop
) -> None:
    await pay(conn, captured(gated, "o-slow", age_days=8), captured(gated, "o-slow", age_days=6))

    await authorise(conn, gated, "o-slow")

    events = await outbox(conn, gated.mall_id)
    assert [s for s, _ in events] == [JOINED, ATTRIBUTED]
    assert await count(conn, "payments", gated.mall_id) == 1
    assert await count(conn, "pending_payments", gated.mall_id) == 0


async def test_a_mall_joining_every_payer_holds_nothing(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    shop = await open_shop(conn, unique_id, None)  # the default: 'always'

    [done] = await pay(conn, captured(shop, "o-any"))

    assert done.member.joined_now
    assert await count(conn, "pending_payments", shop.mall_id) == 0


async def test_an_authorisation_for_an_unknown_appid_is_refused(conn: asyncpg.Connection) -> None:
    stranger = Shop("mall-none", f"wx-none-{uuid.uuid4().hex[:8]}", "SHOP")
    with pytest.raises(NotFound) as caught:
        await authorise(conn, stranger, "o-x")
    assert caught.value.code == "unknown_mall"


# -- mini-program join -------------------------------------------------------------------------


async def join(
    conn: asyncpg.Connection, shop: Shop, openid: str, phone: str = "13800138000"
) -> joining.JoinResult:
    async with conn.transaction():
        return await joining.join_member(
            conn,
            mall_id=shop.mall_id,
            openid=openid,
            channel=JoinChannel.MINI_PROGRAM,
            phone=phone,
        )


async def test_joining_attributes_pending_payments_and_records_consent(
    conn: asyncpg.Connection, gated: Shop
) -> None:
    held = captured(gated, "o-app")
    await pay(conn, held)

    result = await join(conn, gated, "o-app")

    assert result.created
    assert [a.payment.transaction_id for a in result.attributed] == [held.transaction_id]
    events = await outbox(conn, gated.mall_id)
    assert [s for s, _ in events] == [JOINED, ATTRIBUTED]
    joined = events_pb2.MemberJoined.FromString(events[0][1])
    assert joined.channel == member_pb2.JOIN_CHANNEL_MINI_PROGRAM
    assert joined.transaction_id == ""
    assert await count(conn, "consents", gated.mall_id) == 1
    assert result.member.phone == "+8613800138000"
    # Joining again, or authorising afterwards, attributes nothing more.
    again = await join(conn, gated, "o-app")
    await authorise(conn, gated, "o-app")
    assert not again.created
    assert again.member.member_id == result.member.member_id
    assert len(await outbox(conn, gated.mall_id)) == 2


async def test_a_phone_of_another_member_is_refused_and_changes_nothing(
    conn: asyncpg.Connection, gated: Shop
) -> None:
    await join(conn, gated, "o-first", "13900139000")

    with pytest.raises(Conflict) as caught:
        await join(conn, gated, "o-second", "+8613900139000")

    assert caught.value.code == "phone_taken"
    assert await count(conn, "members", gated.mall_id) == 1


@pytest.mark.parametrize("policy", [JoinOnPayment.ALWAYS, JoinOnPayment.AUTHORIZED])
async def test_concurrent_join_and_payment_of_one_shopper_make_one_member(
    member_db: str, conn: asyncpg.Connection, unique_id: str, policy: JoinOnPayment
) -> None:
    shop = await open_shop(conn, unique_id, JoinPolicy(policy, 7))
    others = [await asyncpg.connect(member_db) for _ in range(2)]
    try:
        for round_ in range(5):
            openid = f"o-race-{round_}"
            payment = captured(shop, openid)
            await asyncio.gather(
                join(others[0], shop, openid, f"1380013800{round_}"), pay(others[1], payment)
            )
            members = await conn.fetch(
                """SELECT DISTINCT member_id FROM identities
                    WHERE mall_id = $1 AND kind = 'openid' AND value = $2""",
                shop.mall_id,
                openid,
            )
            assert len(members) == 1
            recorded = await conn.fetchval(
                "SELECT member_id FROM payments WHERE mall_id = $1 AND transaction_id = $2",
                shop.mall_id,
                payment.transaction_id,
            )
            assert recorded == members[0]["member_id"]  # attributed, exactly once
        assert await count(conn, "members", shop.mall_id) == 5
        assert await count(conn, "pending_payments", shop.mall_id) == 0
        subjects = [s for s, _ in await outbox(conn, shop.mall_id)]
        assert subjects.count(JOINED) == 5
        assert subjects.count(ATTRIBUTED) == 5
    finally:
        for other in others:
            await other.close()


# -- over gRPC: JoinMember, SetMemberTags, ListMembers ---------------------------------------


@dataclass(frozen=True)
class Api:
    database_url: str
    members: member_service_pb2_grpc.MemberServiceAsyncStub


@pytest.fixture(scope="module")
async def api(member_db: str, nats_url: str) -> AsyncIterator[Api]:
    settings = Settings(database_url=member_db, nats_url=nats_url, grpc_port=0, log_level="warning")
    async with (
        bootstrap(settings) as roles,
        serving(roles) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        yield Api(member_db, member_service_pb2_grpc.MemberServiceStub(channel))


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert error is not None, caught.value
    return caught.value.code(), error.code


def join_request(
    mall_id: str, openid: str, phone: str = "13800138000"
) -> member_service_pb2.JoinMemberRequest:
    return member_service_pb2.JoinMemberRequest(
        mall_id=mall_id,
        identity=member_pb2.Identity(identity_type=member_pb2.IDENTITY_TYPE_OPENID, value=openid),
        channel=member_pb2.JOIN_CHANNEL_MINI_PROGRAM,
        phone=phone,
    )


async def test_join_member_twice_creates_then_returns_the_member(
    api: Api, conn: asyncpg.Connection, unique_id: str
) -> None:
    shop = await open_shop(conn, unique_id, None)

    first = await api.members.JoinMember(join_request(shop.mall_id, "o-grpc"), timeout=10)
    second = await api.members.JoinMember(join_request(shop.mall_id, "o-grpc"), timeout=10)

    assert first.created
    assert not second.created
    assert second.member.member_id == first.member.member_id
    assert first.member.phone_masked == "138****8000"
    assert first.member.tier_code == "basic"
    assert first.member.join_channel == member_pb2.JOIN_CHANNEL_MINI_PROGRAM
    assert first.member.status == member_pb2.MEMBER_STATUS_ACTIVE
    # The gateway's member card reads the same profile back, by id and by openid.
    by_id = await api.members.GetMember(
        member_service_pb2.GetMemberRequest(mall_id=shop.mall_id, member_id=first.member.member_id),
        timeout=10,
    )
    by_openid = await api.members.GetMemberByIdentity(
        member_service_pb2.GetMemberByIdentityRequest(
            mall_id=shop.mall_id,
            identity=member_pb2.Identity(
                identity_type=member_pb2.IDENTITY_TYPE_OPENID, value="o-grpc"
            ),
        ),
        timeout=10,
    )
    for read in (by_id.member, by_openid.member):
        assert read.phone_masked == "138****8000"
        assert first.member.HasField("joined_at")
        assert read.joined_at == first.member.joined_at
        assert read.join_channel == member_pb2.JOIN_CHANNEL_MINI_PROGRAM


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"phone": ""}, "missing_field"),
        ({"phone": "12345"}, "invalid_phone"),
        ({"channel": member_pb2.JOIN_CHANNEL_POS}, "unsupported_channel"),
        ({"mall_id": "mall-nowhere"}, "unknown_mall"),
    ],
)
async def test_a_bad_join_is_refused(
    api: Api, conn: asyncpg.Connection, unique_id: str, change: dict[str, Any], expected: str
) -> None:
    shop = await open_shop(conn, unique_id, None)
    request = join_request(shop.mall_id, "o-bad")
    for field, value in change.items():
        setattr(request, field, value)

    status, code = await refused(api.members.JoinMember(request, timeout=10))

    assert code == expected
    assert status in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert await count(conn, "members", shop.mall_id) == 0


async def test_join_member_with_a_taken_phone_is_a_failed_precondition(
    api: Api, conn: asyncpg.Connection, unique_id: str
) -> None:
    shop = await open_shop(conn, unique_id, None)
    await api.members.JoinMember(join_request(shop.mall_id, "o-a", "13700137000"), timeout=10)

    status, code = await refused(
        api.members.JoinMember(join_request(shop.mall_id, "o-b", "13700137000"), timeout=10)
    )

    assert (status, code) == (grpc.StatusCode.FAILED_PRECONDITION, "phone_taken")


async def test_tags_are_replaced_and_filter_the_export(
    api: Api, conn: asyncpg.Connection, unique_id: str
) -> None:
    shop = await open_shop(conn, unique_id, None)
    a = (await api.members.JoinMember(join_request(shop.mall_id, "o-1", "13100000001"))).member
    b = (await api.members.JoinMember(join_request(shop.mall_id, "o-2", "13100000002"))).member

    set_a = await api.members.SetMemberTags(
        member_service_pb2.SetMemberTagsRequest(
            mall_id=shop.mall_id, member_id=a.member_id, tags=["vip", "sports", "vip"]
        )
    )
    await api.members.SetMemberTags(
        member_service_pb2.SetMemberTagsRequest(
            mall_id=shop.mall_id, member_id=b.member_id, tags=["sports"]
        )
    )
    replaced = await api.members.SetMemberTags(
        member_service_pb2.SetMemberTagsRequest(
            mall_id=shop.mall_id, member_id=a.member_id, tags=["vip"]
        )
    )

    assert list(set_a.member.tags) == ["sports", "vip"]
    assert list(replaced.member.tags) == ["vip"]
    sporty = await api.members.ListMembers(
        member_service_pb2.ListMembersRequest(mall_id=shop.mall_id, tag="sports")
    )
    assert [m.member_id for m in sporty.members] == [b.member_id]
    basic = await api.members.ListMembers(
        member_service_pb2.ListMembersRequest(mall_id=shop.mall_id, tier_code="basic")
    )
    assert {m.member_id for m in basic.members} == {a.member_id, b.member_id}
    gold = await api.members.ListMembers(
        member_service_pb2.ListMembersRequest(mall_id=shop.mall_id, tier_code="gold")
    )
    assert list(gold.members) == []


@pytest.mark.parametrize(
    ("tags", "member_id", "expected"),
    [
        (["Not A Slug"], None, "invalid_tag"),
        ([f"t{i}" for i in range(21)], None, "too_many_tags"),
        (["vip"], str(uuid.uuid4()), "member_not_found"),
    ],
)
async def test_bad_tags_are_refused(
    api: Api,
    conn: asyncpg.Connection,
    unique_id: str,
    tags: list[str],
    member_id: str | None,
    expected: str,
) -> None:
    shop = await open_shop(conn, unique_id, None)
    joined = (await api.members.JoinMember(join_request(shop.mall_id, "o-t"))).member

    _, code = await refused(
        api.members.SetMemberTags(
            member_service_pb2.SetMemberTagsRequest(
                mall_id=shop.mall_id, member_id=member_id or joined.member_id, tags=tags
            )
        )
    )

    assert code == expected


async def test_list_members_pages_through_one_mall_only(
    api: Api, conn: asyncpg.Connection, unique_id: str
) -> None:
    shop = await open_shop(conn, unique_id, None)
    other = await open_shop(conn, f"{unique_id}x", None)
    await pay(conn, *(captured(shop, f"o-page-{i}") for i in range(5)))
    await pay(conn, captured(other, "o-elsewhere"))

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await api.members.ListMembers(
            member_service_pb2.ListMembersRequest(
                mall_id=shop.mall_id,
                page=common_pb2.PageRequest(page_size=2, page_token=token),
            )
        )
        pages += 1
        assert all(m.mall_id == shop.mall_id for m in page.members)
        seen += [m.member_id for m in page.members]
        token = page.page.next_page_token
        if not token:
            break

    assert pages == 3
    assert len(seen) == 5
    assert seen == sorted(seen, key=uuid.UUID)
    _, code = await refused(
        api.members.ListMembers(
            member_service_pb2.ListMembersRequest(
                mall_id=shop.mall_id, page=common_pb2.PageRequest(page_token="nope")
            )
        )
    )
    assert code == "invalid_page_token"
