"""Points sync to WeChat Pay (积分同步) on real PostgreSQL, against a real fake platform.

The fake platform is an aiohttp server written here: it checks each request's merchant
signature with ``wechatpay.signing`` and our merchant public key, answers as each test scripts
it, and signs its answers with a platform key (or signs them wrongly, when asked to). Keys are
generated when the module starts. Each test starts with an empty queue, so the worker only
ever sees the reports its test made.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kit.cli import running
from kit.db import Connection, open_pool
from kit.migrations import migrate
from mall_testing.plugin import FreshDatabase
from points.adapters import wechat_sync as queue
from points.bootstrap import MIGRATIONS, bootstrap
from points.config import Settings
from points.domain.model import AttributedPayment, AttributedRefund
from points.domain.wechat_sync import SyncKind, SyncState
from points.entrypoints.ops import wechat_sync_commands
from points.service_layer.credits import credit_payments
from points.service_layer.reversals import reverse_refunds
from points.service_layer.wechat_sync import SyncPolicy, WeChatPointsSync
from prometheus_client import REGISTRY
from pydantic import ValidationError
from wechatpay import signing
from wechatpay.client import WeChatPayClient

MCHID = "1900000001"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
PLATFORM_SERIAL = "PUB_KEY_ID_0111000000000000000000000000000001"
NOTIFY = "/v3/businesscircle/points/notify"
OUTCOMES = ("sent", "retried", "failed")
SHANGHAI = ZoneInfo("Asia/Shanghai")
FAST = SyncPolicy(
    batch_size=10,
    lease_s=5.0,
    send_timeout_s=3.0,
    retry_base_s=0.01,
    retry_max_s=0.05,
    poll_interval_s=0.05,
)


@dataclass(frozen=True)
class Keys:
    merchant: rsa.RSAPrivateKey
    platform: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    return Keys(key(), key())


# -- the fake platform ----------------------------------------------------------------------


@dataclass
class FakePlatform:
    """Scripted per transaction id: each call takes the next behaviour; then "ok" for ever.

    Behaviours: "ok" (signed 204), "500", "429", "400" (signed PARAM_ERROR), and 204s whose
    signature does not verify: "bad-signature", "unsigned", "unknown-serial".
    """

    keys: Keys
    script: dict[str, list[str]] = field(default_factory=dict)
    delay_s: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    #: Verified 204s: what counts as "the platform has it" for us.
    accepted: Counter[str] = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    unsigned_requests: int = 0
    url: str = ""

    def merchant_signed(self, request: web.Request, body: str) -> bool:
        auth = signing.parse_authorization(request.headers.get("Authorization", ""))
        if auth is None or (auth.mchid, auth.serial_no) != (MCHID, MERCHANT_SERIAL):
            return False
        message = signing.request_message(
            request.method, request.raw_path, auth.timestamp, auth.nonce_str, body
        )
        return signing.verify(self.keys.merchant.public_key(), message, auth.signature)

    async def notify(self, request: web.Request) -> web.Response:
        text = await request.text()
        if not self.merchant_signed(request, text):
            self.unsigned_requests += 1
            return self.answer(401, {"code": "SIGN_ERROR", "message": "签名错误"})
        body = json.loads(text)
        transaction_id = body["transaction_id"]
        self.calls[transaction_id] += 1
        self.bodies.append(body)
        steps = self.script.get(transaction_id)
        behaviour = steps.pop(0) if steps else "ok"
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if behaviour == "ok":
            self.accepted[transaction_id] += 1
            return self.answer(204)
        if behaviour in ("500", "429"):
            return self.answer(int(behaviour), {"code": "SYSTEM_ERROR", "message": "系统繁忙"})
        if behaviour == "400":
            return self.answer(400, {"code": "PARAM_ERROR", "message": "用户未授权该商圈"})
        return self.answer(204, signature=behaviour)

    def answer(
        self, status: int, body: dict[str, Any] | None = None, *, signature: str = "good"
    ) -> web.Response:
        text = "" if body is None else json.dumps(body, ensure_ascii=False)
        timestamp, nonce = str(int(time.time())), signing.nonce()
        signed = signing.sign(self.keys.platform, signing.response_message(timestamp, nonce, text))
        headers = {
            "Wechatpay-Serial": PLATFORM_SERIAL,
            "Wechatpay-Signature": signed,
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
        }
        if signature == "bad-signature":
            headers["Wechatpay-Nonce"] = nonce + "0"
        elif signature == "unknown-serial":
            headers["Wechatpay-Serial"] = "PUB_KEY_ID_RETIRED"
        elif signature == "unsigned":
            headers = {}
        return web.Response(
            status=status,
            text=text or None,
            headers=headers,
            content_type="application/json" if text else None,
        )


@pytest.fixture
async def platform(keys: Keys) -> AsyncIterator[FakePlatform]:
    fake = FakePlatform(keys)
    app = web.Application()
    app.router.add_post(NOTIFY, fake.notify)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def client_for(platform: FakePlatform) -> WeChatPayClient:
    return WeChatPayClient(
        base_url=platform.url,
        mchid=MCHID,
        serial_no=MERCHANT_SERIAL,
        private_key=platform.keys.merchant,
        platform_keys={PLATFORM_SERIAL: platform.keys.platform.public_key()},
        timeout_s=3.0,
    )


@asynccontextmanager
async def worker(
    pool: asyncpg.Pool, platform: FakePlatform, policy: SyncPolicy = FAST
) -> AsyncIterator[WeChatPointsSync]:
    async with client_for(platform) as client:
        yield WeChatPointsSync(pool, client, policy=policy)


# -- database -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def database(fresh_database: FreshDatabase) -> str:
    url = await fresh_database("points")
    await migrate(url, MIGRATIONS)
    return url


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    """The module's database, with an empty sync queue: the worker claims across malls, so
    each test starts with none of the reports the ones before it left."""
    async with open_pool(database, min_size=1, max_size=6) as p:
        await p.execute("TRUNCATE wechat_points_sync")
        yield p


def payment(
    mall_id: str, amount_fen: int, *, openid: str = "oWmnN4shopper0001", member_id: str = ""
) -> AttributedPayment:
    return AttributedPayment(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=member_id or str(uuid.uuid4()),
        transaction_id=f"4200{uuid.uuid4().hex[:24]}",
        tenant_id="coffee-corner",
        amount_fen=amount_fen,
        paid_at=datetime(2025, 11, 26, 6, 30, tzinfo=UTC),
        appid="wx1234567890abcdef" if openid else "",
        openid=openid,
    )


async def credit(pool: asyncpg.Pool, *payments: AttributedPayment) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await credit_payments(conn, [(p, {}) for p in payments])


async def rows(pool: asyncpg.Pool, transaction_id: str | None = None) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch(
            """SELECT * FROM wechat_points_sync
                WHERE $1::text IS NULL OR transaction_id = $1 ORDER BY created_at""",
            transaction_id,
        )


async def row(pool: asyncpg.Pool, transaction_id: str) -> asyncpg.Record:
    [only] = await rows(pool, transaction_id)
    return only


async def until(
    check: Callable[[], Awaitable[bool]], *, step: Callable[[], Awaitable[Any]]
) -> None:
    """Run ``step`` until ``check`` holds (10 s at most)."""
    deadline = time.monotonic() + 10
    while not await check():
        if time.monotonic() >= deadline:
            raise AssertionError("the condition never held within 10 s of waiting")
        await step()
        await asyncio.sleep(0.02)


async def idle() -> None:
    await asyncio.sleep(0.02)


async def state_is(pool: asyncpg.Pool, transaction_id: str, state: SyncState) -> bool:
    return bool((await row(pool, transaction_id))["state"] == state.value)


@pytest.fixture
def mall_id(unique_id: str) -> str:
    return f"mall-{unique_id}"


# -- queued with the credit -----------------------------------------------------------------


async def test_a_credited_wechat_payment_queues_one_report_in_the_same_transaction(
    pool: asyncpg.Pool, mall_id: str
) -> None:
    p = payment(mall_id, 12_345)

    async with pool.acquire() as conn, pool.acquire() as other:
        async with conn.transaction():
            await credit_payments(conn, [(p, {})])
            inside = await conn.fetchval("SELECT count(*) FROM wechat_points_sync")
            outside = await other.fetchval("SELECT count(*) FROM wechat_points_sync")
        ledger_time = await conn.fetchval(
            "SELECT created_at FROM ledger WHERE transaction_id = $1", p.transaction_id
        )

    assert (inside, outside) == (1, 0)
    report = await row(pool, p.transaction_id)
    assert (report["mall_id"], report["kind"], report["state"]) == (mall_id, "credit", "PENDING")
    assert (report["openid"], report["appid"]) == (p.openid, p.appid)
    assert (report["earn_points"], report["increased_points"], report["total_points"]) == (
        True,
        123,
        123,
    )
    assert report["no_points_remarks"] is None
    assert (report["attempts"], report["sent_at"], report["sub_mchid"]) == (0, None, None)
    assert report["points_update_time"] == ledger_time  # the credit's own moment


async def test_a_rolled_back_credit_leaves_no_report(pool: asyncpg.Pool, mall_id: str) -> None:
    p = payment(mall_id, 5_000)

    async def credit_then_fail(conn: Connection) -> None:
        async with conn.transaction():
            await credit_payments(conn, [(p, {})])
            raise RuntimeError("the consumer failed after the credit")

    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="after the credit"):
            await credit_then_fail(conn)

    assert await rows(pool) == []
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger WHERE mall_id = $1", mall_id) == 0


async def test_a_pos_payment_has_no_openid_and_queues_no_report(
    pool: asyncpg.Pool, mall_id: str
) -> None:
    p = payment(mall_id, 8_800, openid="")

    await credit(pool, p)

    assert await rows(pool) == []
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger WHERE mall_id = $1", mall_id) == 1


async def test_a_payment_delivered_twice_is_reported_once(pool: asyncpg.Pool, mall_id: str) -> None:
    p = payment(mall_id, 5_000)

    await credit(pool, p, p)
    await credit(pool, p)

    assert len(await rows(pool)) == 1


# -- delivered by the worker ----------------------------------------------------------------


async def test_the_worker_sends_a_signed_report_and_marks_it_sent(
    pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    member = str(uuid.uuid4())
    first, p = payment(mall_id, 1_000, member_id=member), payment(mall_id, 12_345, member_id=member)
    await credit(pool, first)
    await credit(pool, p)
    queued = await row(pool, p.transaction_id)

    async with worker(pool, platform) as w:
        assert await w.deliver_due() == 2

    assert platform.unsigned_requests == 0  # the platform verified our merchant signature
    body = next(b for b in platform.bodies if b["transaction_id"] == p.transaction_id)
    assert body == {
        "transaction_id": p.transaction_id,
        "appid": "wx1234567890abcdef",
        "openid": p.openid,
        "earn_points": True,
        "increased_points": 123,
        "points_update_time": queued["points_update_time"]
        .astimezone(SHANGHAI)
        .isoformat(timespec="seconds"),
        "total_points": 133,
    }
    assert body["points_update_time"].endswith("+08:00")
    sent = await row(pool, p.transaction_id)
    assert (sent["state"], sent["attempts"], sent["last_error"]) == ("SENT", 1, None)
    assert sent["sent_at"] is not None
    assert platform.accepted == Counter({first.transaction_id: 1, p.transaction_id: 1})

    async with worker(pool, platform) as w:
        assert await w.deliver_due() == 0  # nothing is sent twice


async def test_a_zero_point_payment_is_reported_with_earn_points_false_and_why(
    pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    member = str(uuid.uuid4())
    await credit(pool, payment(mall_id, 2_000, member_id=member))
    small = payment(mall_id, 50, member_id=member)
    await credit(pool, small)

    async with worker(pool, platform) as w:
        await w.deliver_due()

    body = next(b for b in platform.bodies if b["transaction_id"] == small.transaction_id)
    assert (body["earn_points"], body["increased_points"]) == (False, 0)
    assert body["no_points_remarks"] == "金额不足1元"
    assert body["total_points"] == 20
    assert await state_is(pool, small.transaction_id, SyncState.SENT)


async def test_transient_failures_are_retried_until_sent_exactly_once(
    pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    p = payment(mall_id, 9_900)
    await credit(pool, p)
    platform.script[p.transaction_id] = ["500", "429", "500"]

    async with worker(pool, platform) as w:
        await w.deliver_due()
        after_first = await row(pool, p.transaction_id)
        await until(lambda: state_is(pool, p.transaction_id, SyncState.SENT), step=w.deliver_due)

    assert after_first["state"] == "PENDING"
    assert after_first["error_code"] == "SYSTEM_ERROR"
    assert "500" in after_first["last_error"]
    assert after_first["next_attempt_at"] > after_first["created_at"]
    assert platform.calls[p.transaction_id] == 4
    assert platform.accepted[p.transaction_id] == 1  # one 204: the platform has it once
    sent = await row(pool, p.transaction_id)
    assert (sent["attempts"], sent["error_code"], sent["last_error"]) == (4, None, None)


async def test_a_refusal_marks_the_report_failed_with_the_platform_code(
    pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    p = payment(mall_id, 3_000)
    await credit(pool, p)
    platform.script[p.transaction_id] = ["400"]

    async with worker(pool, platform) as w:
        assert await w.deliver_due() == 1
        await asyncio.sleep(0.1)  # well past any retry delay
        assert await w.deliver_due() == 0

    failed = await row(pool, p.transaction_id)
    assert (failed["state"], failed["error_code"]) == ("FAILED", "PARAM_ERROR")
    assert failed["last_error"] == "用户未授权该商圈"
    assert failed["sent_at"] is None
    assert platform.calls[p.transaction_id] == 1


async def test_an_answer_without_a_valid_platform_signature_is_not_delivery(
    pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    p = payment(mall_id, 4_200)
    await credit(pool, p)
    platform.script[p.transaction_id] = ["bad-signature", "unsigned", "unknown-serial"]
    seen: list[str] = []

    async def step(w: WeChatPointsSync) -> None:
        await w.deliver_due()
        seen.append((await row(pool, p.transaction_id))["state"])

    async with worker(pool, platform) as w:
        await until(lambda: state_is(pool, p.transaction_id, SyncState.SENT), step=lambda: step(w))

    assert seen[-1] == "SENT"
    assert set(seen[:-1]) <= {"PENDING"}  # never SENT on a 204 it could not trust
    assert platform.calls[p.transaction_id] == 4
    sent = await row(pool, p.transaction_id)
    assert sent["attempts"] == 4


async def test_unverified_answers_leave_the_report_pending_with_the_reason(
    pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    p = payment(mall_id, 4_200)
    await credit(pool, p)
    platform.script[p.transaction_id] = ["bad-signature"] * 50

    async with worker(pool, platform) as w:
        for _ in range(3):
            await w.deliver_due()
            await asyncio.sleep(0.06)

    pending = await row(pool, p.transaction_id)
    assert (pending["state"], pending["attempts"]) == ("PENDING", 3)
    assert pending["error_code"] == "RESPONSE_NOT_VERIFIED"
    assert "bad_signature" in pending["last_error"]


async def test_two_workers_racing_send_each_report_exactly_once(
    database: str, pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    payments = [payment(mall_id, 100 * (i + 1)) for i in range(50)]
    for i in range(0, 50, 10):
        await credit(pool, *payments[i : i + 10])
    platform.delay_s = 0.01
    policy = SyncPolicy(
        batch_size=4, lease_s=5, send_timeout_s=3, retry_base_s=0.01, retry_max_s=0.05
    )

    async with (
        open_pool(database, min_size=1, max_size=3) as pool_a,
        open_pool(database, min_size=1, max_size=3) as pool_b,
        worker(pool_a, platform, policy) as a,
        worker(pool_b, platform, policy) as b,
    ):
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in (a, b)]

        async def all_sent() -> bool:
            sent = sum(r["state"] == "SENT" for r in await rows(pool))
            return bool(sent == len(payments))

        try:
            await until(all_sent, step=idle)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    assert platform.calls == Counter({p.transaction_id: 1 for p in payments})
    assert (a.sent + b.sent, min(a.sent, b.sent) > 0) == (50, True)
    assert {r["attempts"] for r in await rows(pool)} == {1}


async def test_a_report_claimed_by_a_worker_that_died_is_sent_after_its_lease(
    pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    p = payment(mall_id, 6_600)
    await credit(pool, p)
    async with pool.acquire() as conn:  # a worker claims it, then dies before sending
        [claim] = await queue.claim_due(conn, limit=10, lease_s=0.3)

    async with worker(pool, platform) as w:
        assert await w.deliver_due() == 0  # leased: nobody else may send it meanwhile
        await asyncio.sleep(0.35)
        assert await w.deliver_due() == 1

    sent = await row(pool, p.transaction_id)
    assert (claim.attempt, sent["state"], sent["attempts"]) == (1, "SENT", 2)
    assert platform.calls[p.transaction_id] == 1


async def test_a_refunds_reversal_waits_until_its_payments_credit_was_sent(
    pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    """Both due at once (a refund right after its payment): the platform must hear the credit
    first, or it would end at the credit's total, not the reversal's."""
    p = payment(mall_id, 6_600)
    await credit(pool, p)
    refund = AttributedRefund(
        event_id=str(uuid.uuid4()),
        mall_id=mall_id,
        member_id=p.member_id,
        transaction_id=p.transaction_id,
        refund_id=f"5030{uuid.uuid4().hex[:20]}",
        refund_amount_fen=6_600,
        pay_amount_fen=6_600,
        appid=p.appid,
        openid=p.openid,
    )
    async with pool.acquire() as conn, conn.transaction():
        await reverse_refunds(conn, [(refund, {})])
    async with pool.acquire() as conn:
        first = await queue.claim_due(conn, limit=10, lease_s=0.05)
    assert [c.report.kind for c in first] == [SyncKind.CREDIT]  # the reversal waits

    await asyncio.sleep(0.1)  # that claim's lease runs out: a worker now sends both, in order
    async with worker(pool, platform) as w:
        assert await w.deliver_due() == 1  # the credit
        assert await w.deliver_due() == 1  # then, and only then, the reversal

    states = {r["kind"]: r["state"] for r in await rows(pool, p.transaction_id)}
    assert states == {"credit": "SENT", "reversal": "SENT"}
    assert platform.calls[p.transaction_id] == 2


async def test_a_late_outcome_of_an_expired_claim_changes_nothing(
    pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    p = payment(mall_id, 6_600)
    await credit(pool, p)
    async with pool.acquire() as conn:
        [stale] = await queue.claim_due(conn, limit=10, lease_s=0.05)
    await asyncio.sleep(0.1)
    async with worker(pool, platform) as w:
        await w.deliver_due()

    async with pool.acquire() as conn:
        saved = await queue.save_outcomes(
            conn,
            [
                queue.Outcome(
                    mall_id,
                    p.transaction_id,
                    SyncKind.CREDIT,
                    stale.attempt,
                    SyncState.FAILED,
                    error_code="LATE",
                )
            ],
        )

    assert saved == 0
    assert (await row(pool, p.transaction_id))["state"] == "SENT"


# -- ops ------------------------------------------------------------------------------------


def connector(database: str) -> Callable[[], Any]:
    @asynccontextmanager
    async def connect() -> AsyncIterator[Connection]:
        conn = await asyncpg.connect(database)
        try:
            yield conn
        finally:
            await conn.close()

    return connect


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_the_wechat_sync_command_lists_states_and_unsent_rows(
    database: str,
    pool: asyncpg.Pool,
    platform: FakePlatform,
    mall_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sent, refused, waiting = (payment(mall_id, 1_000 * (i + 1)) for i in range(3))
    await credit(pool, sent, refused)
    platform.script[refused.transaction_id] = ["400"]
    async with worker(pool, platform) as w:
        await w.deliver_due()
    await credit(pool, waiting)
    commands = wechat_sync_commands(connector(database))
    capsys.readouterr()  # the worker's log lines

    assert await commands["wechat-sync"]([]) == 0
    overview = json_lines(capsys.readouterr().out)
    assert await commands["wechat-sync"]([sent.transaction_id]) == 0
    one = json_lines(capsys.readouterr().out)

    assert overview[0] == {"counts": {"PENDING": 1, "SENT": 1, "FAILED": 1}}
    listed = {r["transaction_id"]: r for r in overview[1:]}
    assert set(listed) == {refused.transaction_id, waiting.transaction_id}
    assert listed[refused.transaction_id]["error_code"] == "PARAM_ERROR"
    assert listed[waiting.transaction_id]["state"] == "PENDING"
    assert all(r["openid"] == "oWmn***01" for r in overview[1:])  # masked
    assert one[0] == {
        "counts": {"PENDING": 0, "SENT": 1, "FAILED": 0},
        "transaction_id": sent.transaction_id,
    }
    assert [(r["transaction_id"], r["state"]) for r in one[1:]] == [(sent.transaction_id, "SENT")]


async def test_ops_can_requeue_a_failed_report(
    database: str,
    pool: asyncpg.Pool,
    platform: FakePlatform,
    mall_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = payment(mall_id, 2_500)
    await credit(pool, p)
    platform.script[p.transaction_id] = ["400"]
    commands = wechat_sync_commands(connector(database))
    async with worker(pool, platform) as w:
        await w.deliver_due()
        capsys.readouterr()  # the worker's log lines
        assert await commands["wechat-sync-retry"]([mall_id, p.transaction_id]) == 0
        assert await commands["wechat-sync-retry"]([mall_id, p.transaction_id]) == 1  # not FAILED
        assert await commands["wechat-sync-retry"]([mall_id]) == 2
        await w.deliver_due()

    assert await state_is(pool, p.transaction_id, SyncState.SENT)
    assert platform.calls[p.transaction_id] == 2
    captured = capsys.readouterr()
    assert "re-queued" in captured.out
    assert "usage" in captured.err


async def test_ops_can_requeue_every_report_refused_with_one_code(
    database: str,
    pool: asyncpg.Pool,
    platform: FakePlatform,
    mall_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    refused = [payment(mall_id, 1_000 * (i + 1)) for i in range(3)]
    other = payment(mall_id, 9_000)
    await credit(pool, *refused, other)
    for p in refused:
        platform.script[p.transaction_id] = ["400"]
    commands = wechat_sync_commands(connector(database))
    async with worker(pool, platform) as w:
        await w.deliver_due()
        await pool.execute(
            "UPDATE wechat_points_sync SET state = 'FAILED', sent_at = NULL, "
            "error_code = 'NO_AUTH', last_error = 'x' WHERE transaction_id = $1",
            other.transaction_id,
        )
        capsys.readouterr()
        assert await commands["wechat-sync-retry"](["--code", "PARAM_ERROR"]) == 0
        await w.deliver_due()

    assert "re-queued 3 FAILED report(s) with code PARAM_ERROR" in capsys.readouterr().out
    assert [await state_is(pool, p.transaction_id, SyncState.SENT) for p in refused] == [True] * 3
    assert await state_is(pool, other.transaction_id, SyncState.FAILED)


async def test_outcomes_and_the_backlog_are_exposed_for_alerts(
    pool: asyncpg.Pool, platform: FakePlatform, mall_id: str
) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {o: sample("mall_wechat_points_sync_total", outcome=o) for o in OUTCOMES}
    sent, refused, retried = (payment(mall_id, 1_000 * (i + 1)) for i in range(3))
    await credit(pool, sent, refused, retried)
    platform.script[refused.transaction_id] = ["400"]
    platform.script[retried.transaction_id] = ["500"] * 50

    async with worker(pool, platform) as w:
        await w.deliver_due()
        await w.sample_backlog()

    after = {o: sample("mall_wechat_points_sync_total", outcome=o) for o in OUTCOMES}
    assert {o: after[o] - before[o] for o in OUTCOMES} == {"sent": 1, "retried": 1, "failed": 1}
    assert sample("mall_wechat_points_sync_pending") == 1
    assert sample("mall_wechat_points_sync_failed") == 1
    oldest = sample("mall_wechat_points_sync_oldest_pending_seconds")
    assert 0 < oldest < 60  # the age of the report this test queued, not a stale default


# -- wiring: settings and the relay role -----------------------------------------------------


def write_keys(tmp_path: Path, keys: Keys) -> tuple[Path, Path]:
    private = tmp_path / "apiclient_key.pem"
    private.write_bytes(
        keys.merchant.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = tmp_path / "platform_pub.pem"
    public.write_bytes(
        keys.platform.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def test_settings_read_the_platform_keys_as_a_json_object(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = write_keys(tmp_path, keys)
    monkeypatch.setenv("WECHATPAY_API_BASE", "http://127.0.0.1:8090")
    monkeypatch.setenv("WECHATPAY_MCHID", MCHID)
    monkeypatch.setenv("WECHATPAY_MERCHANT_SERIAL", MERCHANT_SERIAL)
    monkeypatch.setenv("WECHATPAY_MERCHANT_PRIVATE_KEY_FILE", str(private))
    monkeypatch.setenv(
        "WECHATPAY_PLATFORM_PUBLIC_KEYS",
        json.dumps({PLATFORM_SERIAL: str(public), "OLD_SERIAL": str(public)}),
    )

    settings = Settings()

    assert settings.wechatpay_platform_public_keys == {
        PLATFORM_SERIAL: public,
        "OLD_SERIAL": public,
    }
    assert settings.wechatpay_client() is not None
    monkeypatch.delenv("WECHATPAY_MCHID")
    with pytest.raises(ValidationError, match="WECHATPAY_MCHID must be"):
        Settings()


def test_without_an_api_base_no_client_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WECHATPAY_API_BASE", raising=False)

    assert Settings().wechatpay_client() is None


def test_a_malformed_key_file_stops_the_start(tmp_path: Path, keys: Keys) -> None:
    private, public = write_keys(tmp_path, keys)
    public.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    settings = Settings(
        wechatpay_api_base="http://127.0.0.1:8090",
        wechatpay_mchid=MCHID,
        wechatpay_merchant_serial=MERCHANT_SERIAL,
        wechatpay_merchant_private_key_file=private,
        wechatpay_platform_public_keys={PLATFORM_SERIAL: public},
    )

    with pytest.raises(ValueError, match=r"WECHATPAY_PLATFORM_PUBLIC_KEYS\[PUB_KEY_ID"):
        settings.wechatpay_client()


async def test_the_relay_role_runs_the_sync_worker(
    database: str,
    pool: asyncpg.Pool,
    platform: FakePlatform,
    nats_url: str,
    tmp_path: Path,
    keys: Keys,
    mall_id: str,
) -> None:
    private, public = write_keys(tmp_path, keys)
    settings = Settings(
        database_url=database,
        nats_url=nats_url,
        grpc_port=0,
        log_level="warning",
        wechatpay_api_base=platform.url,
        wechatpay_mchid=MCHID,
        wechatpay_merchant_serial=MERCHANT_SERIAL,
        wechatpay_merchant_private_key_file=private,
        wechatpay_platform_public_keys={PLATFORM_SERIAL: public},
        wechatpay_sync_poll_interval_s=0.05,
    )
    p = payment(mall_id, 7_700)

    async with bootstrap(settings) as roles, running(roles, ["relay"]):
        assert {"wechat-sync", "wechat-sync-retry", "dead-letters"} <= set(roles.commands)
        await credit(pool, p)
        await until(lambda: state_is(pool, p.transaction_id, SyncState.SENT), step=idle)

    assert platform.accepted[p.transaction_id] == 1


async def test_without_a_platform_the_relay_warns_and_reports_stay_pending(
    database: str, pool: asyncpg.Pool, nats_url: str, mall_id: str
) -> None:
    settings = Settings(database_url=database, nats_url=nats_url, grpc_port=0)
    p = payment(mall_id, 7_700)

    with structlog.testing.capture_logs() as logs:
        async with bootstrap(settings) as roles, running(roles, ["relay"]):
            await credit(pool, p)
            await asyncio.sleep(0.2)

    assert await state_is(pool, p.transaction_id, SyncState.PENDING)
    assert any(
        e["event"] == "wechat_points_sync_disabled" and e["log_level"] == "warning" for e in logs
    )
