"""One member per person on real PostgreSQL: identities link once, two members found to be one
person merge (audited, once), and payments racing a merge all land on the survivor."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kit.errors import Conflict, InvalidInput, NotFound
from kit.migrations import migrate
from mall.member.v1 import events_pb2
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS
from member.domain.benefits import Benefit, Change, benefit_changes
from member.domain.merges import MergeRequest
from member.domain.model import Attribution, CapturedPayment, CapturedRefund
from member.domain.tag_rules import TagRule
from member.entrypoints.ops import tier_commands
from member.service_layer import directory, tag_rules, tags
from member.service_layer.merges import link_identity, merge_members
from member.service_layer.payments import attribute_payments
from member.service_layer.refunds import attribute_refunds

GOLD = 2_000_000


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


@pytest.fixture
async def mall(conn: asyncpg.Connection, unique_id: str) -> str:
    mall_id = f"mall-{unique_id}"
    async with conn.transaction():
        await directory.create_mall(
            conn,
            mall_id=mall_id,
            name="Mall",
            appid=f"wx{unique_id}",
            brand_id="brand",
            mchid="1900000109",
            time_zone="Asia/Shanghai",
        )
        await directory.create_tenant(
            conn, mall_id=mall_id, tenant_id="sports", name="Sports", category="sports"
        )
        await directory.create_store(
            conn,
            mall_id=mall_id,
            tenant_id="sports",
            store_id="sports-l1",
            name="Sports L1",
            mchid="1900000109",
            sub_mchid="",
            shop_number=f"SHOP-{unique_id}",
        )
    return mall_id


def captured(mall_id: str, openid: str, amount_fen: int) -> CapturedPayment:
    tag = mall_id.removeprefix("mall-")
    return CapturedPayment(
        event_id=str(uuid.uuid4()),
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        appid=f"wx{tag}",
        mchid="1900000109",
        shop_number=f"SHOP-{tag}",
        openid=openid,
        amount_fen=amount_fen,
        paid_at=datetime.now(UTC),
    )


async def pay(conn: asyncpg.Connection, *payments: CapturedPayment) -> list[Attribution]:
    async with conn.transaction():
        return await attribute_payments(conn, [(p, {}) for p in payments])


async def member_of(conn: asyncpg.Connection, mall_id: str, openid: str) -> str:
    [done] = await pay(conn, captured(mall_id, openid, 100))
    return done.member.member_id


def request(mall_id: str, survivor: str, merged: str, request_id: str = "") -> MergeRequest:
    return MergeRequest(
        mall_id=mall_id,
        survivor_member_id=survivor,
        merged_member_id=merged,
        merge_request_id=request_id or f"merge-{uuid.uuid4().hex[:12]}",
        operator="ops:alice",
        reason="same phone, confirmed at the service desk",
    )


async def merge(conn: asyncpg.Connection, req: MergeRequest) -> bool:
    async with conn.transaction():
        return (await merge_members(conn, req)).duplicate


async def link(
    conn: asyncpg.Connection, mall_id: str, member_id: str, kind: str, value: str
) -> bool:
    async with conn.transaction():
        return (
            await link_identity(conn, mall_id=mall_id, member_id=member_id, kind=kind, value=value)
        )[1]


async def events(conn: asyncpg.Connection, mall_id: str, subject: str) -> list[bytes]:
    rows = await conn.fetch(
        "SELECT payload FROM outbox WHERE mall_id = $1 AND subject = $2 ORDER BY seq",
        mall_id,
        subject,
    )
    return [r["payload"] for r in rows]


async def spend_of(conn: asyncpg.Connection, mall_id: str, member_id: str) -> tuple[int, int]:
    """(payments, fen) recorded for the member."""
    row = await conn.fetchrow(
        """SELECT count(*) AS n, coalesce(sum(amount_fen), 0) AS fen FROM payments
            WHERE mall_id = $1 AND member_id = $2""",
        mall_id,
        uuid.UUID(member_id),
    )
    assert row is not None
    return row["n"], row["fen"]


# -- domain ---------------------------------------------------------------------------------


def test_a_merge_request_names_two_members_an_operator_and_a_reason() -> None:
    with pytest.raises(InvalidInput) as missing:
        MergeRequest("m", "a", "b", "r-1", " ", "")
    assert missing.value.code == "missing_field"
    with pytest.raises(InvalidInput) as itself:
        MergeRequest("m", "a", "a", "r-1", "ops", "why")
    assert itself.value.code == "merge_with_itself"


def test_benefit_changes_name_what_was_gained_lost_and_changed() -> None:
    parking = Benefit("parking", "Parking 2h")
    before = [Benefit("points", "1x"), parking]
    after = [Benefit("points", "1.5x"), Benefit("lounge", "VIP lounge")]

    assert benefit_changes(before, after) == [
        (Change.GAINED, Benefit("lounge", "VIP lounge")),
        (Change.LOST, parking),
        (Change.CHANGED, Benefit("points", "1.5x")),
    ]
    assert benefit_changes(before, before) == []


_LINES = st.lists(
    st.builds(
        Benefit,
        st.sampled_from(["points", "parking", "lounge", "birthday", "gift"]),
        st.sampled_from(["A", "B"]),
    ),
    unique_by=lambda b: b.benefit_code,
)


@given(_LINES, _LINES)
def test_benefit_changes_turn_the_old_lines_into_the_new(
    before: list[Benefit], after: list[Benefit]
) -> None:
    lines = {b.benefit_code: b for b in before}
    for change, line in benefit_changes(before, after):
        if change is Change.LOST:
            assert lines.pop(line.benefit_code) == line
        else:
            assert (line.benefit_code in lines) == (change is Change.CHANGED)
            lines[line.benefit_code] = line
    assert sorted(lines.values(), key=lambda b: b.benefit_code) == sorted(
        after, key=lambda b: b.benefit_code
    )


# -- linking identities -----------------------------------------------------------------------


async def test_an_identity_links_once_and_finds_the_member(
    conn: asyncpg.Connection, mall: str
) -> None:
    member_id = await member_of(conn, mall, "o-link")

    assert await link(conn, mall, member_id, "card", "CARD-0001") is False
    assert await link(conn, mall, member_id, "card", "CARD-0001") is True  # idempotent
    assert await link(conn, mall, member_id, "phone", "13800138000") is False
    holder = await conn.fetchval(
        "SELECT member_id FROM identities WHERE mall_id = $1 AND kind = 'phone'", mall
    )
    assert str(holder) == member_id
    assert (
        await conn.fetchval(
            "SELECT value FROM identities WHERE mall_id = $1 AND kind = 'phone'", mall
        )
        == "+8613800138000"
    )


async def test_an_identity_of_another_member_is_refused_and_nothing_changes(
    conn: asyncpg.Connection, mall: str
) -> None:
    first = await member_of(conn, mall, "o-first")
    second = await member_of(conn, mall, "o-second")
    await link(conn, mall, first, "unionid", "u-shared")

    with pytest.raises(Conflict) as refused:
        await link(conn, mall, second, "unionid", "u-shared")

    assert refused.value.code == "identity_held_by_other_member"
    assert refused.value.details == {"holder_member_id": first}
    rows = await conn.fetch(
        "SELECT member_id FROM identities WHERE mall_id = $1 AND value = 'u-shared'", mall
    )
    assert [str(r["member_id"]) for r in rows] == [first]


async def test_linking_to_an_unknown_member_or_with_a_bad_identity_is_refused(
    conn: asyncpg.Connection, mall: str
) -> None:
    member_id = await member_of(conn, mall, "o-bad")
    with pytest.raises(NotFound):
        await link(conn, mall, str(uuid.uuid4()), "card", "CARD-X")
    with pytest.raises(InvalidInput):
        await link(conn, mall, member_id, "email", "a@b.c")
    with pytest.raises(InvalidInput):
        await link(conn, mall, member_id, "card", "")


# -- merging ----------------------------------------------------------------------------------


async def test_a_merge_moves_identities_spend_tags_and_the_better_tier(
    conn: asyncpg.Connection, mall: str
) -> None:
    survivor = await member_of(conn, mall, "o-keep")
    [rich] = await pay(conn, captured(mall, "o-gone", GOLD))
    merged = rich.member.member_id
    review_at = await conn.fetchval(
        "SELECT tier_review_at FROM members WHERE mall_id = $1 AND member_id = $2",
        mall,
        uuid.UUID(merged),
    )
    async with conn.transaction():
        await tags.set_member_tags(conn, mall, merged, ["vip"])
        await tags.set_member_tags(conn, mall, survivor, ["runner"])
    req = request(mall, survivor, merged)

    assert await merge(conn, req) is False

    assert await spend_of(conn, mall, survivor) == (2, GOLD + 100)
    assert await spend_of(conn, mall, merged) == (0, 0)
    kept = await conn.fetchrow(
        """SELECT tier_code, tier_review_at, status FROM members
            WHERE mall_id = $1 AND member_id = $2""",
        mall,
        uuid.UUID(survivor),
    )
    assert kept is not None
    assert (kept["tier_code"], kept["tier_review_at"], kept["status"]) == (
        "gold",
        review_at,
        "active",
    )
    gone = await conn.fetchrow(
        "SELECT status, merged_into FROM members WHERE mall_id = $1 AND member_id = $2",
        mall,
        uuid.UUID(merged),
    )
    assert gone is not None
    assert (gone["status"], str(gone["merged_into"])) == ("merged", survivor)
    holders = await conn.fetch("SELECT DISTINCT member_id FROM identities WHERE mall_id = $1", mall)
    assert [str(r["member_id"]) for r in holders] == [survivor]
    tag_rows = await conn.fetch(
        "SELECT member_id, tag FROM member_tags WHERE mall_id = $1 ORDER BY tag", mall
    )
    assert [(str(r["member_id"]), r["tag"]) for r in tag_rows] == [
        (survivor, "runner"),
        (survivor, "vip"),
    ]
    audit = await conn.fetchrow("SELECT * FROM member_merges WHERE mall_id = $1", mall)
    assert audit is not None
    assert (audit["operator"], audit["reason"], audit["moved_payments"]) == (
        "ops:alice",
        req.reason,
        1,
    )
    [announced] = [
        events_pb2.IdentityMerged.FromString(p)
        for p in await events(conn, mall, "member.identity.merged")
    ]
    assert (announced.survivor_member_id, announced.merged_member_id) == (survivor, merged)
    assert announced.merge_request_id == req.merge_request_id
    changes = [
        events_pb2.TierChanged.FromString(p)
        for p in await events(conn, mall, "member.tier.changed")
    ]
    assert [(c.member_id, c.tier_code, c.reason) for c in changes][-1] == (
        survivor,
        "gold",
        events_pb2.TIER_CHANGE_REASON_MERGE,
    )
    notices = [
        events_pb2.BenefitsChanged.FromString(p)
        for p in await events(conn, mall, "member.benefits.changed")
    ]
    assert notices[-1].member_id == survivor
    assert (notices[-1].previous_tier.tier_code, notices[-1].tier.tier_code) == ("basic", "gold")
    assert {c.benefit.benefit_code for c in notices[-1].changes} >= {"birthday_double_points"}


async def test_a_merge_is_carried_out_once(conn: asyncpg.Connection, mall: str) -> None:
    survivor = await member_of(conn, mall, "o-a")
    merged = await member_of(conn, mall, "o-b")
    third = await member_of(conn, mall, "o-c")
    req = request(mall, survivor, merged)

    assert await merge(conn, req) is False
    assert await merge(conn, req) is True  # the same request again: its first outcome
    with pytest.raises(Conflict) as reused:
        await merge(conn, request(mall, survivor, third, req.merge_request_id))
    with pytest.raises(Conflict) as again:
        await merge(conn, request(mall, third, merged))  # a new request, same merged member
    with pytest.raises(Conflict) as into_merged:
        await merge(conn, request(mall, merged, third))

    assert reused.value.code == "merge_request_reused"
    assert again.value.code == into_merged.value.code == "member_not_active"
    assert len(await events(conn, mall, "member.identity.merged")) == 1
    assert await conn.fetchval("SELECT count(*) FROM member_merges WHERE mall_id = $1", mall) == 1


async def test_a_survivor_absorbed_later_takes_its_merged_members_along(
    conn: asyncpg.Connection, mall: str
) -> None:
    first = await member_of(conn, mall, "o-1")
    second = await member_of(conn, mall, "o-2")
    final = await member_of(conn, mall, "o-3")
    await merge(conn, request(mall, second, first))
    await merge(conn, request(mall, final, second))

    [after] = await pay(conn, captured(mall, "o-1", 500))

    assert after.member.member_id == final
    assert await spend_of(conn, mall, final) == (4, 800)
    pointers = await conn.fetch(
        "SELECT DISTINCT merged_into FROM members WHERE mall_id = $1 AND status = 'merged'", mall
    )
    assert [str(r["merged_into"]) for r in pointers] == [final]


async def test_payments_after_a_merge_land_on_the_survivor(
    conn: asyncpg.Connection, mall: str
) -> None:
    survivor = await member_of(conn, mall, "o-phone-app")
    merged = await member_of(conn, mall, "o-old-card")
    await merge(conn, request(mall, survivor, merged))

    [late] = await pay(conn, captured(mall, "o-old-card", 2_500))

    assert late.member.member_id == survivor
    assert late.member.joined_now is False
    attributed = events_pb2.PaymentAttributed.FromString(
        (await events(conn, mall, "member.payment.attributed"))[-1]
    )
    assert (attributed.member_id, attributed.openid) == (survivor, "o-old-card")
    assert await spend_of(conn, mall, merged) == (0, 0)


async def test_a_merge_racing_payments_loses_no_spend(
    member_db: str, conn: asyncpg.Connection, mall: str
) -> None:
    survivor = await member_of(conn, mall, "o-race-keep")
    merged = await member_of(conn, mall, "o-race-gone")
    payers = [await asyncpg.connect(member_db) for _ in range(4)]
    merger = await asyncpg.connect(member_db)
    amounts = [101 * (i + 1) for i in range(24)]

    async def payer(c: asyncpg.Connection, mine: list[int], openid: str) -> None:
        for amount in mine:
            await pay(c, captured(mall, openid, amount))

    async def merging() -> None:
        await asyncio.sleep(0.01)
        await merge(merger, request(mall, survivor, merged))

    try:
        await asyncio.gather(
            *(
                payer(c, amounts[i::4], "o-race-gone" if i % 2 else "o-race-keep")
                for i, c in enumerate(payers)
            ),
            merging(),
        )
    finally:
        for c in (*payers, merger):
            await c.close()

    assert await spend_of(conn, mall, survivor) == (len(amounts) + 2, sum(amounts) + 200)
    assert await spend_of(conn, mall, merged) == (0, 0)
    attributed = [
        events_pb2.PaymentAttributed.FromString(p)
        for p in await events(conn, mall, "member.payment.attributed")
    ]
    assert sum(a.amount_fen for a in attributed) == sum(amounts) + 200  # each payment once
    seq_of_merge = await conn.fetchval(
        "SELECT seq FROM outbox WHERE mall_id = $1 AND subject = 'member.identity.merged'", mall
    )
    after_merge = await conn.fetch(
        """SELECT payload FROM outbox WHERE mall_id = $1 AND seq > $2
              AND subject = 'member.payment.attributed'""",
        mall,
        seq_of_merge,
    )
    assert {
        events_pb2.PaymentAttributed.FromString(r["payload"]).member_id for r in after_merge
    } <= {survivor}


async def test_a_review_date_of_the_merged_member_does_not_linger(
    conn: asyncpg.Connection, mall: str
) -> None:
    survivor = await member_of(conn, mall, "o-r1")
    [rich] = await pay(conn, captured(mall, "o-r2", GOLD))
    await merge(conn, request(mall, survivor, rich.member.member_id))

    due = await conn.fetchval(
        """SELECT count(*) FROM members WHERE mall_id = $1 AND tier_review_at IS NOT NULL
              AND status = 'merged'""",
        mall,
    )
    assert due == 0
    assert datetime.now(UTC) + timedelta(days=300) < await conn.fetchval(
        "SELECT tier_review_at FROM members WHERE mall_id = $1 AND member_id = $2",
        mall,
        uuid.UUID(survivor),
    )


async def test_the_merge_audit_trail_lists_who_why_and_when(
    member_db: str, conn: asyncpg.Connection, mall: str, capsys: pytest.CaptureFixture[str]
) -> None:
    survivor = await member_of(conn, mall, "o-audit-1")
    merged = await member_of(conn, mall, "o-audit-2")
    req = request(mall, survivor, merged, "ticket-9")
    await merge(conn, req)
    pool = await asyncpg.create_pool(member_db, min_size=1, max_size=2)
    try:
        code = await tier_commands(pool)["list-merges"]([mall])
        usage = await tier_commands(pool)["list-merges"]([])
    finally:
        await pool.close()

    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    row = json.loads(line)
    assert (code, usage) == (0, 2)
    assert (row["merge_request_id"], row["operator"], row["reason"]) == (
        "ticket-9",
        "ops:alice",
        req.reason,
    )
    assert (row["survivor_member_id"], row["merged_member_id"]) == (survivor, merged)
    assert row["merged_at"]


async def test_rule_tags_follow_merges_and_refunds(conn: asyncpg.Connection, mall: str) -> None:
    async with conn.transaction():
        await tag_rules.put_rule(conn, mall, TagRule("sporty", "sports", 30, 10_000))
    [a] = await pay(conn, captured(mall, "o-half-1", 6_000))
    [b] = await pay(conn, captured(mall, "o-half-2", 6_000))
    assert await rule_tagged(conn, mall) == []

    await merge(conn, request(mall, a.member.member_id, b.member.member_id))
    together = await rule_tagged(conn, mall)
    async with conn.transaction():
        await attribute_refunds(conn, [(refund_of(b), {})])
        await tag_rules.tag_payers(conn, [(mall, a.member.member_id)])  # as its consumer does

    assert together == [a.member.member_id]
    assert await rule_tagged(conn, mall) == []


def refund_of(a: Attribution) -> CapturedRefund:
    return CapturedRefund(
        event_id=str(uuid.uuid4()),
        refund_id=f"5030{uuid.uuid4().hex[:20]}",
        transaction_id=a.payment.transaction_id,
        appid=a.payment.appid,
        openid=a.payment.openid,
        refund_amount_fen=a.payment.amount_fen,
        refunded_at=datetime.now(UTC),
    )


async def rule_tagged(conn: asyncpg.Connection, mall_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT member_id FROM member_tags WHERE mall_id = $1 AND source = 'rule'", mall_id
    )
    return [str(r["member_id"]) for r in rows]
