"""Payment reconciliation (ReconciliationService.ReconcilePayments) on real PostgreSQL, real
JetStream and the WeChat Pay simulator.

The simulator notifies payments and refunds; a stand-in for the gateway and member (written
here, a few lines) acknowledges each notification by publishing what the gateway and member
would (``payments.payment.captured`` / ``member.payment.attributed`` and the refund pair);
points itself runs for real: it credits, reverses and syncs the points back to the
simulator. A clean run reconciles to zero differences. Then the test plants faults by
writing into points' tables directly — a missing credit, a doubled credit, a wrong amount,
an unsynced credit — and each is reported by its transaction id; and a payment the
"gateway" never acknowledged is reported as a missing capture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from aiohttp import web
from eventbus.streams import ensure_streams
from kit.cli import running, serving
from kit.db import open_pool
from kit.errors import Unavailable
from kit.migrations import migrate
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.member.v1 import events_pb2 as member_events
from mall.payments.v1 import events_pb2 as payment_events
from mall.points.v1 import points_service_pb2, points_service_pb2_grpc
from mall_testing.plugin import FreshDatabase, Nats
from points.bootstrap import MIGRATIONS, bootstrap
from points.config import Settings
from points.entrypoints.recon_grpc import Reconciler, platform_from, reconcile_command
from wechatpay import signing
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.config import Merchant
from wechatpay_simulator.config import Settings as SimulatorSettings

MCHID = "1900000190"
MERCHANT_SERIAL = "6B1A8F0E5D4C3B2A19080706050403020100AABB"
APPID = "wxrecon00000000001"
PAYMENTS = 6
POLLS = 600  # x 0.05 s
KIND = points_service_pb2.DifferenceKind


@dataclass
class MallPath:
    """The gateway and member as far as reconciliation sees them: events on the streams."""

    mall_id: str
    js: Any
    #: openid → member id (one member per shopper).
    members: dict[str, str] = field(default_factory=dict)
    #: Notifications answered 500 (never acknowledged), by openid.
    refuse: set[str] = field(default_factory=set)

    async def notified(self, resource: dict[str, Any]) -> bool:
        if resource["openid"] in self.refuse:
            return False
        member_id = self.members.setdefault(resource["openid"], str(uuid.uuid4()))
        tx = resource["transaction_id"]
        if "refund_id" in resource:
            refund_id = resource["refund_id"]
            captured_refund = payment_events.PaymentRefunded(
                event_id=refund_id,
                transaction_id=tx,
                refund_id=refund_id,
                appid=resource["appid"],
                mchid=resource["mchid"],
                openid=resource["openid"],
                pay_amount_fen=resource["pay_amount"],
                refund_amount_fen=resource["refund_amount"],
                mall_id=self.mall_id,
            )
            await self._publish("payments.payment.refunded", captured_refund, refund_id)
            attributed_refund = member_events.RefundAttributed(
                event_id=str(uuid.uuid4()),
                mall_id=self.mall_id,
                member_id=member_id,
                transaction_id=tx,
                refund_id=refund_id,
                refund_amount_fen=resource["refund_amount"],
                pay_amount_fen=resource["pay_amount"],
                appid=resource["appid"],
                openid=resource["openid"],
                source=common_pb2.PAYMENT_SOURCE_WECHAT_PAY,
            )
            await self._publish("member.refund.attributed", attributed_refund, f"r-{refund_id}")
            return True
        captured = payment_events.PaymentCaptured(
            event_id=tx,
            transaction_id=tx,
            appid=resource["appid"],
            mchid=resource["mchid"],
            shop_number=resource["shop_number"],
            openid=resource["openid"],
            amount_fen=resource["amount"],
            mall_id=self.mall_id,
        )
        await self._publish("payments.payment.captured", captured, tx)
        attributed = member_events.PaymentAttributed(
            event_id=str(uuid.uuid4()),
            mall_id=self.mall_id,
            member_id=member_id,
            tier_code="basic",
            tenant_id="tenant-1",
            amount_fen=resource["amount"],
            transaction_id=tx,
            source=common_pb2.PAYMENT_SOURCE_WECHAT_PAY,
            appid=resource["appid"],
            openid=resource["openid"],
        )
        attributed.paid_at.FromDatetime(datetime.now(UTC))
        await self._publish("member.payment.attributed", attributed, f"a-{tx}")
        return True

    async def _publish(self, subject: str, message: Any, msg_id: str) -> None:
        await self.js.publish(subject, message.SerializeToString(), headers={"Nats-Msg-Id": msg_id})


@contextlib.asynccontextmanager
async def sink(sim_ref: list[Running], path: MallPath) -> AsyncIterator[str]:
    """The notify URL: acknowledge (204) after publishing, or refuse (500)."""

    async def notify(request: web.Request) -> web.Response:
        envelope = await request.json()
        resource = sim_ref[0].state.deliveries[envelope["id"]].resource
        if await path.notified(resource):
            return web.Response(status=204)
        return web.json_response({"code": "FAIL", "message": "refused"}, status=500)

    app = web.Application()
    app.router.add_post("/notify", notify)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/notify"
    finally:
        await runner.cleanup()


async def until(what: str, probe: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(POLLS):
        if await probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str, *args: object) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def by_transaction(
    response: points_service_pb2.ReconcilePaymentsResponse,
) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for d in response.differences:
        found.setdefault(d.transaction_id, set()).add(KIND.Name(d.kind))
    return found


@pytest.mark.timeout(120)
async def test_a_clean_run_reconciles_to_zero_and_each_planted_fault_is_named(
    fresh_database: FreshDatabase,
    nats_url: str,
    jetstream: Nats,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = await fresh_database("points")
    await migrate(db, MIGRATIONS)
    mall_id = f"recon-{uuid.uuid4().hex[:12]}"
    merchant_key, platform_key = signing.generate_private_key(), signing.generate_private_key()
    key_file = tmp_path / "merchant.pem"
    key_file.write_bytes(signing.private_key_pem(merchant_key))
    platform_file = tmp_path / "platform.pem"
    platform_file.write_bytes(signing.public_key_pem(platform_key.public_key()))
    await ensure_streams(jetstream.js, "PAYMENTS", "MEMBER")  # the gateway's and member's
    path = MallPath(mall_id, jetstream.js)
    sim_ref: list[Running] = []
    start = datetime.now(UTC) - timedelta(seconds=1)

    async with contextlib.AsyncExitStack() as stack:
        notify_url = await stack.enter_async_context(sink(sim_ref, path))
        simulator = SimulatorSettings.create(
            [
                Merchant(
                    MCHID,
                    public_key=merchant_key.public_key(),
                    serial_no=MERCHANT_SERIAL,
                    notify_url=notify_url,
                )
            ],
            platform_key=platform_key,
            retry_scale=0.01,
        )
        sim = await stack.enter_async_context(serve(simulator))
        sim_ref.append(sim)
        settings = Settings(
            database_url=db,
            nats_url=nats_url,
            grpc_port=0,
            log_format="console",
            log_level="warning",
            wechatpay_api_base=sim.url,
            wechatpay_mchid=MCHID,
            wechatpay_merchant_serial=MERCHANT_SERIAL,
            wechatpay_merchant_private_key_file=key_file,
            wechatpay_platform_public_keys={simulator.platform_serial: platform_file},
            wechatpay_sync_poll_interval_s=0.05,
            wechatpay_sync_retry_base_s=0.05,
            wechatpay_bill_url=f"{sim.url}/control/bill",
        )
        roles = await stack.enter_async_context(bootstrap(settings))
        target = await stack.enter_async_context(serving(roles))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(target))
        stub = points_service_pb2_grpc.ReconciliationServiceStub(channel)

        async def reconcile() -> points_service_pb2.ReconcilePaymentsResponse:
            request = points_service_pb2.ReconcilePaymentsRequest(
                mall_id=mall_id,
                start_time=timestamp(start),
                end_time=timestamp(datetime.now(UTC) + timedelta(seconds=1)),
            )
            return await stub.ReconcilePayments(request, timeout=30)

        async def pay(openid: str, amount: int) -> str:
            body = {
                "appid": APPID,
                "mchid": MCHID,
                "shop_number": "SHOP-1",
                "openid": openid,
                "amount": amount,
            }
            async with http.post(f"{sim.url}/control/payments", json=body) as resp:
                assert resp.status == 202, await resp.text()
                return str((await resp.json())["transaction_id"])

        async def sent(kind: str) -> int:
            return int(
                await fetchval(
                    db,
                    "SELECT count(*) FROM wechat_points_sync"
                    " WHERE mall_id = $1 AND kind = $2 AND state = 'SENT'",
                    mall_id,
                    kind,
                )
            )

        # -- a clean run: payments, one refund, everything credited, reversed and synced ----
        async with running(roles, ("relay", "consume")):
            txs = [await pay(f"o-{i}-{uuid.uuid4().hex}", 1_000 * (i + 1)) for i in range(PAYMENTS)]

            async def all_synced() -> bool:
                return await sent("credit") == PAYMENTS

            await until("every credit synced", all_synced)
            refund = {"transaction_id": txs[5], "refund_amount": 2_000}
            async with http.post(f"{sim.url}/control/refunds", json=refund) as resp:
                assert resp.status == 202, await resp.text()
                refund_id = (await resp.json())["refund_id"]

            async def reversal_synced() -> bool:
                return await sent("reversal") == 1

            await until("the reversal synced", reversal_synced)

        clean = await reconcile()
        assert list(clean.differences) == []
        assert clean.payments_checked == PAYMENTS
        assert clean.refunds_checked == 1
        sources = {s.name: s for s in clean.sources}
        assert {n: (s.payments, s.refunds) for n, s in sources.items()} == {
            "platform": (PAYMENTS, 1),
            "gateway": (PAYMENTS, 1),
            "member": (PAYMENTS, 1),
            "points": (PAYMENTS, 1),
            "sync": (PAYMENTS, 1),
        }
        assert all(s.consulted for s in clean.sources)

        # A window that ends before it starts, or none at all, is refused and reads nothing.
        for bad in (
            points_service_pb2.ReconcilePaymentsRequest(
                mall_id=mall_id, start_time=timestamp(start), end_time=timestamp(start)
            ),
            points_service_pb2.ReconcilePaymentsRequest(mall_id=mall_id),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as rejected:
                await stub.ReconcilePayments(bad, timeout=10)
            assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Without the platform's record: still green, and says the platform was skipped.
        async with open_pool(db, min_size=1, max_size=2) as pool:
            blind = await Reconciler(pool, nats_url, platform=None)(
                mall_id, start, datetime.now(UTC) + timedelta(seconds=1)
            )
        assert blind.differences == []
        platform = next(s for s in blind.sources if s.name == "platform")
        # A platform that does not answer is a clear UNAVAILABLE, not a list of differences.
        async with open_pool(db, min_size=1, max_size=2) as pool:
            gone = Reconciler(pool, nats_url, platform_from("http://127.0.0.1:9/bill", MCHID))
            with pytest.raises(Unavailable) as unavailable:
                await gone(mall_id, start, datetime.now(UTC))
        assert unavailable.value.code == "platform_bill_unavailable"
        assert not platform.consulted
        assert "not configured" in platform.note

        # -- plant one fault per payment, straight into points' tables ------------------------
        missing, doubled, wrong, unsynced = txs[:4]
        await execute(
            db,
            "SET session_replication_role = replica",  # no append-only trigger, no FKs
            f"DELETE FROM ledger WHERE mall_id = '{mall_id}' AND transaction_id = '{missing}'"
            " AND kind = 'credit'",
            "DROP INDEX ledger_one_credit_per_payment",
            f"""INSERT INTO ledger (mall_id, member_id, kind, points, balance_after,
                                    transaction_id, description)
                SELECT mall_id, member_id, kind, points, balance_after + points, transaction_id,
                       'planted double'
                  FROM ledger WHERE mall_id = '{mall_id}' AND transaction_id = '{doubled}'
                   AND kind = 'credit'""",
            f"""UPDATE wechat_points_sync SET increased_points = increased_points + 5
                 WHERE mall_id = '{mall_id}' AND transaction_id = '{wrong}'
                   AND kind = 'credit'""",
            f"""UPDATE wechat_points_sync SET state = 'PENDING', sent_at = NULL
                 WHERE mall_id = '{mall_id}' AND transaction_id = '{unsynced}'
                   AND kind = 'credit'""",
        )
        # ...and a payment the gateway never acknowledges (the platform keeps retrying it).
        refused = f"o-refused-{uuid.uuid4().hex}"
        path.refuse.add(refused)
        never = await pay(refused, 5_00)

        async def refused_once() -> bool:
            delivery = next(
                d
                for d in sim.state.deliveries.values()
                if d.resource.get("transaction_id") == never
            )
            return len(delivery.attempts) >= 1

        await until("the refused notification attempted", refused_once)

        faulty = await reconcile()
        found = by_transaction(faulty)
        assert found[missing] >= {"DIFFERENCE_KIND_MISSING_CREDIT"}
        assert found[doubled] == {"DIFFERENCE_KIND_DOUBLED_CREDIT"}
        assert "DIFFERENCE_KIND_WRONG_AMOUNT" in found[wrong]
        assert found[unsynced] == {"DIFFERENCE_KIND_NOT_SYNCED"}
        assert found[never] == {"DIFFERENCE_KIND_MISSING_CAPTURE"}
        assert txs[4] not in found  # the untouched ones stay clean
        assert txs[5] not in found
        # The deleted and the doubled credit leave balances that no longer match the ledger.
        unbalanced = {
            d.member_id
            for d in faulty.differences
            if d.kind == KIND.DIFFERENCE_KIND_UNBALANCED_ACCOUNT
        }
        assert len(unbalanced) == 2
        wrong_amount = next(
            d
            for d in faulty.differences
            if d.transaction_id == wrong
            and d.kind == KIND.DIFFERENCE_KIND_WRONG_AMOUNT
            and d.stage == "sync"
        )
        credited = 3_000 // 100  # 1 point per yuan
        assert (wrong_amount.expected, wrong_amount.actual) == (
            f"{credited} points",
            f"{credited + 5} points",
        )
        doubled_row = next(d for d in faulty.differences if d.transaction_id == doubled)
        assert (doubled_row.expected, doubled_row.actual) == ("1 credit", "2 credits")
        assert refund_id  # the refund reconciled clean above

        # The ops command (make reconcile) says the same as JSON lines, and exits 1.
        end = datetime.now(UTC) + timedelta(seconds=1)
        async with open_pool(db, min_size=1, max_size=2) as pool:
            command = reconcile_command(
                Reconciler(pool, nats_url, platform_from(settings.wechatpay_bill_url, MCHID))
            )["reconcile"]
            capsys.readouterr()
            code = await command([mall_id, start.isoformat(), end.isoformat()])
            usage = await command([])
        assert (code, usage) == (1, 2)
        # (Only the command's JSON lines: a log line of the still-serving service may interleave.)
        out = capsys.readouterr().out.splitlines()
        lines = [json.loads(line) for line in out if line.startswith("{")]
        assert lines[-1]["green"] is False
        assert lines[-1]["differences"] == len(faulty.differences)
        named = {(d["kind"], d["transaction_id"]) for d in lines if "kind" in d}
        assert {("missing_credit", missing), ("doubled_credit", doubled)} <= named
        assert {("not_synced", unsynced), ("missing_capture", never)} <= named
