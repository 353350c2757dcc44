"""Earning rules on real PostgreSQL and over gRPC: versions, the credit's rule version, codes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from eventbus.consumer import Delivery
from kit.cli import serving
from kit.grpc_errors import from_rpc_error
from kit.migrations import migrate
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.member.v1 import events_pb2 as member_events
from mall.points.v1 import events_pb2, points_pb2, points_service_pb2, points_service_pb2_grpc
from mall_testing.plugin import FreshDatabase
from points.adapters import rules
from points.bootstrap import MIGRATIONS, bootstrap
from points.config import Settings
from points.domain.model import AttributedPayment, Credit
from points.domain.rules import EarningRule
from points.entrypoints.consumers import PAYMENT_ATTRIBUTED, on_payment_attributed
from points.service_layer.credits import credit_payments

PAID = datetime(2025, 11, 26, 6, 30, tzinfo=UTC)
CREDITED = "points.points.credited"


@dataclass(frozen=True)
class Admin:
    database_url: str
    stub: points_service_pb2_grpc.PointsAdminServiceAsyncStub


@pytest.fixture(scope="module")
async def admin(fresh_database: FreshDatabase, nats_url: str) -> AsyncIterator[Admin]:
    url = await fresh_database("points")
    await migrate(url, MIGRATIONS)
    settings = Settings(database_url=url, nats_url=nats_url, grpc_port=0, log_level="warning")
    async with (
        bootstrap(settings) as roles,
        serving(roles) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        yield Admin(url, points_service_pb2_grpc.PointsAdminServiceStub(channel))


@pytest.fixture
async def conn(admin: Admin) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(admin.database_url)
    try:
        yield connection
    finally:
        await connection.close()


def payment(mall_id: str, amount_fen: int, **overrides: str | datetime) -> AttributedPayment:
    fields: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "mall_id": mall_id,
        "member_id": str(uuid.uuid4()),
        "transaction_id": f"4200{uuid.uuid4().hex[:20]}",
        "tenant_id": "coffee-corner",
        "amount_fen": amount_fen,
        "paid_at": PAID,
    }
    return AttributedPayment(**(fields | overrides))  # type: ignore[arg-type]


async def credit(conn: asyncpg.Connection, *payments: AttributedPayment) -> list[Credit]:
    async with conn.transaction():
        return await credit_payments(conn, [(p, {}) for p in payments])


async def put(conn: asyncpg.Connection, rule: EarningRule, recorded_at: datetime) -> EarningRule:
    async with conn.transaction():
        return await rules.put_rule(conn, rule, recorded_at)


async def ledger(conn: asyncpg.Connection, mall_id: str) -> list[tuple[str, int, str]]:
    rows = await conn.fetch(
        """SELECT transaction_id, points, rule_version FROM ledger
            WHERE mall_id = $1 ORDER BY entry_id""",
        mall_id,
    )
    return [(r["transaction_id"], r["points"], r["rule_version"]) for r in rows]


async def credited_versions(conn: asyncpg.Connection, mall_id: str) -> list[tuple[int, str]]:
    rows = await conn.fetch(
        "SELECT payload FROM outbox WHERE mall_id = $1 AND subject = $2 ORDER BY seq",
        mall_id,
        CREDITED,
    )
    credited = [events_pb2.PointsCredited.FromString(r["payload"]) for r in rows]
    return [(e.points, e.rule_version) for e in credited]


# -- crediting by the mall's rules -----------------------------------------------------------


async def test_credits_follow_the_malls_rules_and_record_the_version(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    before = PAID - timedelta(days=1)
    await put(conn, EarningRule(mall_id, "gold-shop", 100, 3, tenant_id="gold-shop"), before)
    await put(conn, EarningRule(mall_id, "no-market", 100, 0, tenant_id="market"), before)
    base, gold, market = (
        payment(mall_id, 12_345),
        payment(mall_id, 12_345, tenant_id="gold-shop"),
        payment(mall_id, 12_345, tenant_id="market"),
    )

    done = await credit(conn, base, gold, market)

    assert [(c.points, c.rule_version) for c in done] == [
        (123, "base-1"),
        (369, "gold-shop@1"),
        (0, "no-market@1"),
    ]
    assert await ledger(conn, mall_id) == [
        (base.transaction_id, 123, "base-1"),
        (gold.transaction_id, 369, "gold-shop@1"),
        (market.transaction_id, 0, "no-market@1"),
    ]
    assert await credited_versions(conn, mall_id) == [
        (123, "base-1"),
        (369, "gold-shop@1"),
        (0, "no-market@1"),
    ]


async def test_a_payment_before_a_new_version_earns_by_the_old_one(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    first = await put(conn, EarningRule(mall_id, "base", 100, 1), PAID - timedelta(days=1))
    second = await put(conn, EarningRule(mall_id, "base", 100, 2), PAID)
    assert (first.version, second.version) == (1, 2)
    late, on_time = (
        payment(mall_id, 1_000, paid_at=PAID - timedelta(minutes=1)),
        payment(mall_id, 1_000, paid_at=PAID + timedelta(minutes=1)),
    )

    done = await credit(conn, late, on_time)

    assert [(c.points, c.rule_version) for c in done] == [(10, "base@1"), (20, "base@2")]


async def test_a_redelivered_payment_keeps_its_credit_after_a_rule_change(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    p = payment(mall_id, 1_000)
    await credit(conn, p)
    await put(conn, EarningRule(mall_id, "tenfold", 100, 10), PAID - timedelta(days=1))

    [again] = await credit(conn, p)

    assert not again.applied
    assert await ledger(conn, mall_id) == [(p.transaction_id, 10, "base-1")]
    assert await credited_versions(conn, mall_id) == [(10, "base-1")]


async def test_versions_are_never_changed_in_place(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    await put(conn, EarningRule(mall_id, "base", 100, 1), PAID)

    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute(
            "UPDATE earning_rules SET points_per_unit = 9 WHERE mall_id = $1", mall_id
        )


# -- gRPC ------------------------------------------------------------------------------------


async def test_a_category_rule_applies_at_tenants_of_that_category_only(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    before = PAID - timedelta(days=1)
    await put(conn, EarningRule(mall_id, "dining", 100, 2, tenant_category="dining"), before)
    dining, fashion, unknown = (
        payment(mall_id, 12_345, tenant_id="noodles", tenant_category="dining"),
        payment(mall_id, 12_345, tenant_id="boutique", tenant_category="fashion"),
        payment(mall_id, 12_345, tenant_id="kiosk"),
    )

    done = await credit(conn, dining, fashion, unknown)

    assert [(c.points, c.rule_version) for c in done] == [
        (246, "dining@1"),
        (123, "base-1"),
        (123, "base-1"),
    ]


async def test_the_consumer_takes_the_tenant_category_from_the_event(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    await put(
        conn,
        EarningRule(mall_id, "dining", 100, 2, tenant_category="dining"),
        PAID - timedelta(days=1),
    )
    msg = member_events.PaymentAttributed(
        mall_id=mall_id,
        member_id=str(uuid.uuid4()),
        tenant_id="noodles",
        tenant_category="dining",
        amount_fen=10_000,
        transaction_id=f"4200{uuid.uuid4().hex[:20]}",
        paid_at=timestamp(PAID),
    )
    delivery = Delivery(str(uuid.uuid4()), PAYMENT_ATTRIBUTED, msg.SerializeToString())

    async with conn.transaction():
        await on_payment_attributed(conn, [delivery])

    assert await ledger(conn, mall_id) == [(msg.transaction_id, 200, "dining@1")]


async def test_a_tenant_rule_outranks_a_category_rule_at_equal_priority(
    conn: asyncpg.Connection, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    before = PAID - timedelta(days=1)
    # "a-dining" sorts before "z-noodles": rule_id alone would pick the category rule.
    await put(conn, EarningRule(mall_id, "a-dining", 100, 2, tenant_category="dining"), before)
    await put(conn, EarningRule(mall_id, "z-noodles", 100, 5, tenant_id="noodles"), before)
    await put(
        conn,
        EarningRule(mall_id, "z-dining-plus", 100, 4, tenant_category="dining", priority=1),
        before,
    )
    at_noodles = payment(mall_id, 10_000, tenant_id="noodles", tenant_category="dining")
    at_dumplings = payment(mall_id, 10_000, tenant_id="dumplings", tenant_category="dining")

    done = await credit(conn, at_noodles, at_dumplings)

    # A higher-priority category rule still wins over the tenant rule.
    assert [(c.points, c.rule_version) for c in done] == [
        (400, "z-dining-plus@1"),
        (400, "z-dining-plus@1"),
    ]
    mall_id = f"mall-{unique_id}-eq"
    await put(conn, EarningRule(mall_id, "a-dining", 100, 2, tenant_category="dining"), before)
    await put(conn, EarningRule(mall_id, "z-noodles", 100, 5, tenant_id="noodles"), before)
    at_noodles = payment(mall_id, 10_000, tenant_id="noodles", tenant_category="dining")
    at_dumplings = payment(mall_id, 10_000, tenant_id="dumplings", tenant_category="dining")

    done = await credit(conn, at_noodles, at_dumplings)

    assert [(c.points, c.rule_version) for c in done] == [
        (500, "z-noodles@1"),
        (200, "a-dining@1"),
    ]


async def test_put_and_list_carry_the_tenant_category(admin: Admin, unique_id: str) -> None:
    mall_id = f"mall-{unique_id}"
    put_back = await admin.stub.PutEarningRule(
        points_service_pb2.PutEarningRuleRequest(
            rule=wire_rule(mall_id, "dining", tenant_category="dining")
        ),
        timeout=10,
    )
    listed = await admin.stub.ListEarningRules(
        points_service_pb2.ListEarningRulesRequest(mall_id=mall_id), timeout=10
    )

    assert (put_back.rule.tenant_category, put_back.rule.tenant_id) == ("dining", "")
    assert [(r.rule_id, r.tenant_category) for r in listed.rules] == [("dining", "dining")]


def wire_rule(mall_id: str, rule_id: str, **fields: object) -> points_pb2.EarningRule:
    values: dict[str, object] = {"spend_unit_fen": 100, "points_per_unit": 1} | fields
    return points_pb2.EarningRule(mall_id=mall_id, rule_id=rule_id, **values)  # type: ignore[arg-type]


async def test_put_bumps_the_version_and_list_pages_current_rules(
    admin: Admin, unique_id: str
) -> None:
    mall_id = f"mall-{unique_id}"
    starts = timestamp(PAID)
    first = await admin.stub.PutEarningRule(
        points_service_pb2.PutEarningRuleRequest(
            rule=wire_rule(
                mall_id,
                "campaign",
                points_per_unit=5,
                priority=100,
                tier_code="gold",
                tenant_id="gold-shop",
                sources=[common_pb2.PAYMENT_SOURCE_WECHAT_PAY],
                starts_at=starts,
                version=42,
            )
        ),
        timeout=10,
    )
    second = await admin.stub.PutEarningRule(
        points_service_pb2.PutEarningRuleRequest(
            rule=wire_rule(mall_id, "campaign", points_per_unit=6)
        )
    )
    await admin.stub.PutEarningRule(
        points_service_pb2.PutEarningRuleRequest(rule=wire_rule(mall_id, "base"))
    )

    assert (first.rule.version, second.rule.version) == (1, 2)
    assert first.rule.HasField("updated_at")
    assert list(first.rule.sources) == [common_pb2.PAYMENT_SOURCE_WECHAT_PAY]
    assert first.rule.starts_at == starts
    assert not first.rule.HasField("ends_at")
    page1 = await admin.stub.ListEarningRules(
        points_service_pb2.ListEarningRulesRequest(
            mall_id=mall_id, page=common_pb2.PageRequest(page_size=1)
        )
    )
    page2 = await admin.stub.ListEarningRules(
        points_service_pb2.ListEarningRulesRequest(
            mall_id=mall_id,
            page=common_pb2.PageRequest(page_size=1, page_token=page1.page.next_page_token),
        )
    )
    assert [(r.rule_id, r.version) for r in page1.rules] == [("base", 1)]
    assert [(r.rule_id, r.version, r.points_per_unit) for r in page2.rules] == [("campaign", 2, 6)]
    assert page2.page.next_page_token == ""


@pytest.mark.parametrize(
    ("rule", "code"),
    [
        (None, "missing_field"),
        (wire_rule("", "r"), "missing_field"),
        (wire_rule("m", ""), "invalid_rule_id"),
        (wire_rule("m", "r", spend_unit_fen=0), "invalid_spend_unit"),
        (wire_rule("m", "r", points_per_unit=-1), "invalid_points_per_unit"),
        (wire_rule("m", "r", min_amount_fen=-1), "invalid_min_amount"),
        (wire_rule("m", "r", sources=[common_pb2.PAYMENT_SOURCE_UNSPECIFIED]), "invalid_source"),
        (wire_rule("m", "r", starts_at=timestamp(PAID), ends_at=timestamp(PAID)), "invalid_window"),
        (wire_rule("m", "r", tenant_id="t", tenant_category="dining"), "tenant_and_category"),
        (wire_rule("m", "r", tenant_category="x" * 65), "invalid_tenant_category"),
    ],
)
async def test_put_refuses_invalid_rules_with_stable_codes(
    admin: Admin, rule: points_pb2.EarningRule | None, code: str
) -> None:
    request = points_service_pb2.PutEarningRuleRequest(rule=rule)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.stub.PutEarningRule(request, timeout=10)
    error = from_rpc_error(caught.value)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error is not None
    assert error.code == code


async def test_list_refuses_a_missing_mall_and_a_bad_page_size(admin: Admin) -> None:
    for request, code in [
        (points_service_pb2.ListEarningRulesRequest(), "missing_field"),
        (
            points_service_pb2.ListEarningRulesRequest(
                mall_id="m", page=common_pb2.PageRequest(page_size=101)
            ),
            "invalid_page_size",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.stub.ListEarningRules(request, timeout=10)
        error = from_rpc_error(caught.value)
        assert error is not None
        assert error.code == code
