"""Scale-out on one host: two replicas of every consumer, relay and the gateway.

Every role runs as its own operating-system process (``python -m <service> <role>``), as it
would in its own pod, against one PostgreSQL and one NATS:

    member  serve ×1, consume ×2, relay ×2
    points  serve ×1, consume ×2, relay ×2
    gateway serve ×2 (two HTTP ports)

A thousand payments are posted round-robin over both gateways, a tenth of them a second time
to the *other* gateway. What must hold:

* the work splits: both replicas of each consumer and each relay did some of it (read from
  each process's own Prometheus ``/metrics``, the numbers ops would see);
* nothing is done twice: the per-replica ``handled`` counts add up to exactly one per distinct
  payment, the relays' ``published`` counts to exactly the events that reached the streams,
  and the ledger holds exactly one row per distinct payment with every shopper's balance right;
* every replica stops cleanly on SIGTERM (exit 0), as a rolling update needs.

* the periodic jobs run once although both points relays run them: every lot is reminded
  once (``points.points.expiring``) and expired once (``points.points.expired``, one ledger
  entry per member), and every balance still equals its ledger. (Coupon reminders join this
  check when coupons land.) The WeChat Pay points sync, the other relay-role worker, stays
  idle here (no ``WECHATPAY_API_BASE``); two racing sync workers are covered in
  services/points/tests/test_points_wechat_sync.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kit.migrations import migrate
from mall_testing.demo import DemoMall, payment_notification, seed
from mall_testing.embedded import free_port
from mall_testing.plugin import FreshDatabase, Nats
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS

from tests.conftest import fetchval
from tests.suite_processes import (
    consumer_settled,
    execute,
    fleet,
    handled,
    sample_values,
    stream_subjects,
    total,
    wait_until,
)

DISTINCT_PAYMENTS = 1000
DUPLICATES = 100  # of those, posted a second time to the other gateway
SHOPPERS = 150
IN_FLIGHT = 64

MEMBER_CAPTURED = "member-payment-captured"
MEMBER_DIRECTORY = "member-directory-kv"
POINTS_ATTRIBUTED = "points-payment-attributed"


@pytest.mark.timeout(600)
async def test_two_replicas_split_the_work_and_do_nothing_twice(
    fresh_database: FreshDatabase, nats_url: str, jetstream: Nats, tmp_path: Path
) -> None:
    member_db = await fresh_database("member")
    points_db = await fresh_database("points")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    member_grpc, points_grpc = free_port(), free_port()
    gateway_ports = [free_port(), free_port()]

    async with fleet(tmp_path, nats_url) as procs, aiohttp.ClientSession() as http:
        # The gRPC servers first: they create the streams, the rest then starts against them.
        await procs.start(
            "member-serve", "member", "serve", DATABASE_URL=member_db, GRPC_PORT=str(member_grpc)
        )
        await procs.start(
            "points-serve", "points", "serve", DATABASE_URL=points_db, GRPC_PORT=str(points_grpc)
        )
        await procs.wait_serving_metrics(http)
        for i in (1, 2):
            for role in ("consume", "relay"):
                await procs.start(f"member-{role}-{i}", "member", role, DATABASE_URL=member_db)
                await procs.start(
                    f"points-{role}-{i}",
                    "points",
                    role,
                    DATABASE_URL=points_db,
                    # The relay role also runs the expiry and reminder jobs: often, for the end.
                    EXPIRY_INTERVAL_S="0.5",
                )
        for i, port in enumerate(gateway_ports, start=1):
            await procs.start(
                f"gateway-{i}",
                "gateway",
                "serve",
                HTTP_PORT=str(port),
                WECHATPAY_ACCEPT_UNSIGNED="true",
                MEMBER_GRPC_TARGET=f"127.0.0.1:{member_grpc}",
                POINTS_GRPC_TARGET=f"127.0.0.1:{points_grpc}",
            )
        await procs.wait_serving_metrics(http)
        gateways = [f"http://127.0.0.1:{port}" for port in gateway_ports]
        for base in gateways:

            async def ready(base: str = base) -> int:
                async with http.get(f"{base}/readyz") as resp:
                    return resp.status

            await wait_until(f"{base}/readyz", ready, lambda status: status == 200)

        mall = await seed(f"127.0.0.1:{member_grpc}", DemoMall.unique())
        rng = random.Random(20261127)
        shoppers = [f"o-{uuid.uuid4().hex}" for _ in range(SHOPPERS)]
        notifications = [
            payment_notification(
                mall, openid=rng.choice(shoppers), amount_fen=rng.randint(100, 2_000_00)
            )
            for _ in range(DISTINCT_PAYMENTS)
        ]
        # Round-robin over the gateways; the duplicates go to the other one, shuffled in so
        # that some race their original through the two processes.
        posts = [(i % 2, n) for i, n in enumerate(notifications)]
        posts += [
            (1 - i % 2, notifications[i]) for i in rng.sample(range(DISTINCT_PAYMENTS), DUPLICATES)
        ]
        rng.shuffle(posts)
        expected: Counter[str] = Counter()
        for n in notifications:
            expected[n["resource"]["openid"]] += n["resource"]["amount"] // 100

        gate = asyncio.Semaphore(IN_FLIGHT)

        async def post(gateway: int, notification: dict[str, Any]) -> int:
            async with (
                gate,
                http.post(
                    f"{gateways[gateway]}/wechatpay/notifications", json=notification
                ) as resp,
            ):
                return resp.status

        statuses = await asyncio.gather(*(post(g, n) for g, n in posts))
        assert statuses == [204] * len(posts)
        posted_to = Counter(g for g, _ in posts)

        # Settle: every payment credited, every durable consumer drained and acked, every
        # outbox empty. Only then are the counters final.
        ledger_sql = "SELECT count(*) FROM ledger WHERE mall_id = $1"

        async def ledger_rows() -> object:
            procs.check_alive()
            return await fetchval(points_db, ledger_sql, mall.mall_id)

        await wait_until("ledger rows", ledger_rows, lambda n: n >= DISTINCT_PAYMENTS)
        for stream, durable in (
            ("PAYMENTS", MEMBER_CAPTURED),
            ("MEMBER", MEMBER_DIRECTORY),
            ("MEMBER", POINTS_ATTRIBUTED),
        ):

            async def settled(stream: str = stream, durable: str = durable) -> bool:
                return await consumer_settled(jetstream, stream, durable)

            await wait_until(f"{durable} drained", settled, bool)
        for db in (member_db, points_db):

            async def outbox(db: str = db) -> object:
                return await fetchval(db, "SELECT count(*) FROM outbox")

            await wait_until("outbox drained", outbox, lambda n: n == 0)

        # What reached the streams. PAYMENTS collapsed the duplicates whichever gateway
        # published them (Nats-Msg-Id = transaction id); member and points passed on exactly one
        # event per payment. Member also announces joins and directory changes (and more as it
        # grows): the relays must account for every message, whatever its subject.
        payments_subjects = await stream_subjects(jetstream, "PAYMENTS")
        member_subjects = await stream_subjects(jetstream, "MEMBER")
        points_subjects = await stream_subjects(jetstream, "POINTS")
        assert payments_subjects == {"payments.payment.captured": DISTINCT_PAYMENTS}
        assert member_subjects["member.payment.attributed"] == DISTINCT_PAYMENTS
        assert points_subjects["points.points.credited"] == DISTINCT_PAYMENTS
        directory_events = sum(
            n for s, n in member_subjects.items() if s.startswith("member.directory.")
        )
        assert directory_events > 0  # the seeded mall, its tenants and stores

        # The ledger: exactly one credit per distinct payment, every balance right.
        assert await fetchval(points_db, ledger_sql, mall.mall_id) == DISTINCT_PAYMENTS
        credited_ids = await fetchval(
            points_db,
            "SELECT json_agg(transaction_id) FROM ledger WHERE mall_id = $1 AND kind = 'credit'",
            mall.mall_id,
        )
        assert isinstance(credited_ids, str)
        credited = json.loads(credited_ids)
        assert len(credited) == DISTINCT_PAYMENTS
        assert set(credited) == {n["resource"]["transaction_id"] for n in notifications}
        members = await fetchval(
            member_db,
            """SELECT json_object_agg(value, member_id) FROM identities
                WHERE mall_id = $1 AND kind = 'openid'""",
            mall.mall_id,
        )
        balances = await fetchval(
            points_db,
            "SELECT json_object_agg(member_id, balance) FROM accounts WHERE mall_id = $1",
            mall.mall_id,
        )
        assert isinstance(members, str)
        assert isinstance(balances, str)
        member_of, balance_of = json.loads(members), json.loads(balances)
        # Two consumer replicas raced to join the same shoppers: one member each, still.
        assert len(member_of) == len(expected)
        assert await fetchval(
            member_db, "SELECT count(*) FROM members WHERE mall_id = $1", mall.mall_id
        ) == len(expected)
        assert {openid: balance_of[member_of[openid]] for openid in expected} == dict(expected)
        assert (
            await fetchval(
                member_db, "SELECT count(*) FROM payments WHERE mall_id = $1", mall.mall_id
            )
            == DISTINCT_PAYMENTS
        )

        # Each process's own counters: the work split, and the parts add up exactly.
        async def scrape() -> dict[str, str]:
            texts = await asyncio.gather(*(procs.metrics(http, r) for r in procs.replicas))
            return {r.name: t for r, t in zip(procs.replicas, texts, strict=True)}

        wanted = {
            # (replica name prefix, consumer; "" for the relay) → the exact total over replicas
            ("member-consume", MEMBER_CAPTURED): DISTINCT_PAYMENTS,
            ("member-consume", MEMBER_DIRECTORY): directory_events,
            ("points-consume", POINTS_ATTRIBUTED): DISTINCT_PAYMENTS,
            ("member-relay", ""): sum(member_subjects.values()),
            ("points-relay", ""): sum(points_subjects.values()),
        }

        def per_replica(texts: dict[str, str], prefix: str, consumer: str) -> dict[str, int]:
            return {
                name: handled(text, consumer)
                if consumer
                else total(text, "mall_outbox_published_total")
                for name, text in texts.items()
                if name.startswith(prefix)
            }

        def all_reached(texts: dict[str, str]) -> bool:
            # A counter moves a moment after the commit it counts: wait for the totals...
            return all(sum(per_replica(texts, p, c).values()) >= n for (p, c), n in wanted.items())

        texts: dict[str, str] = await wait_until("metrics totals", scrape, all_reached)
        # ...then they must be exact: nothing handled or published twice across replicas.
        split = {key: per_replica(texts, *key) for key in wanted}
        # Shown with -s: the split, and what else the consumers saw (redeliveries, retries).
        print("\nstreams:", json.dumps([payments_subjects, member_subjects, points_subjects]))
        print("per-replica counts:", json.dumps({f"{p}/{c}": v for (p, c), v in split.items()}))
        print(
            "other outcomes:",
            json.dumps(
                {
                    name: {
                        f"{labels['consumer']}/{labels['outcome']}": int(value)
                        for labels, value in sample_values(text, "mall_consumer_messages_total")
                        if labels["outcome"] != "handled" and value
                    }
                    for name, text in texts.items()
                    if "consume" in name
                }
            ),
        )
        for (prefix, consumer), exact in wanted.items():
            counts = split[(prefix, consumer)]
            assert len(counts) == 2, counts
            assert sum(counts.values()) == exact, (prefix, consumer, counts)
        for key in (
            ("member-consume", MEMBER_CAPTURED),
            ("points-consume", POINTS_ATTRIBUTED),
            ("member-relay", ""),
            ("points-relay", ""),
        ):
            assert all(c > 0 for c in split[key].values()), (key, split[key])
        for name, text in texts.items():
            assert total(text, "mall_dead_letters_total") == 0, name
        # Both gateways answered their share, and only 204s.
        for i, replica in enumerate(procs.named("gateway-")):
            notes = [
                (labels, value)
                for labels, value in sample_values(texts[replica.name], "mall_http_requests_total")
                if "notifications" in labels.get("route", "")
            ]
            assert {labels["status"] for labels, _ in notes} == {"204"}, notes
            assert int(sum(v for _, v in notes)) == posted_to[i]

        # The periodic jobs, in both points relays at once: every lot is reminded once, then
        # expired once, whichever replica's job gets there (advisory lock + SKIP LOCKED).
        lots = await fetchval(
            points_db, "SELECT count(*) FROM lots WHERE mall_id = $1", mall.mall_id
        )
        assert lots == DISTINCT_PAYMENTS  # every payment here earned points: one lot each
        await execute(
            points_db,
            "UPDATE lots SET expires_at = now() + interval '10 days' WHERE mall_id = $1",
            mall.mall_id,
        )

        async def unreminded() -> object:
            return await fetchval(
                points_db,
                "SELECT count(*) FROM lots WHERE mall_id = $1 AND reminded_at IS NULL",
                mall.mall_id,
            )

        await wait_until("every lot reminded", unreminded, lambda n: n == 0)
        await execute(
            points_db,
            "UPDATE lots SET expires_at = now() - interval '1 second' WHERE mall_id = $1",
            mall.mall_id,
        )

        async def unexpired() -> object:
            return await fetchval(
                points_db,
                "SELECT count(*) FROM lots WHERE mall_id = $1 AND points_remaining > 0",
                mall.mall_id,
            )

        await wait_until("every lot expired", unexpired, lambda n: n == 0)

        async def points_outbox() -> object:
            return await fetchval(points_db, "SELECT count(*) FROM outbox")

        await wait_until("points outbox drained", points_outbox, lambda n: n == 0)
        after_jobs = await stream_subjects(jetstream, "POINTS")
        assert after_jobs["points.points.expiring"] == DISTINCT_PAYMENTS
        assert after_jobs["points.points.expired"] == DISTINCT_PAYMENTS
        expiry_entries = await fetchval(
            points_db,
            "SELECT count(*) FROM ledger WHERE mall_id = $1 AND kind = 'expiry'",
            mall.mall_id,
        )
        assert expiry_entries == len(expected)  # one per member, never two
        unsound = await fetchval(
            points_db,
            """SELECT count(*) FROM accounts a WHERE a.mall_id = $1 AND (a.balance <> 0
                   OR a.balance <> (SELECT sum(points) FROM ledger l
                                     WHERE l.mall_id = a.mall_id AND l.member_id = a.member_id))""",
            mall.mall_id,
        )
        assert unsound == 0

        codes = await procs.stop()
        failed = {
            r.name: (codes[r.name], r.log_tail()) for r in procs.replicas if codes[r.name] != 0
        }
        assert codes == dict.fromkeys(codes, 0), failed
