"""NATS users from deploy/nats/permissions.yaml: each service can do its work, and no more.

A nats-server runs with the authorization block the dev overlay ships (rendered from the
table, passwords from the environment as in the cluster); the services' own code paths
(ensure_streams, open_bucket, KvMirror, durable pull consumers) run as their users.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import os
import secrets
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import nats
import nats.errors
import pytest
from coupons.bootstrap import MIGRATIONS as COUPONS_MIGRATIONS
from coupons.bootstrap import bootstrap as coupons_bootstrap
from coupons.commitment_settings import CommitmentSettings
from coupons.config import Settings as CouponsSettings
from eventbus.streams import STREAMS, ensure_streams
from gateway.adapters import claims_feed
from gateway.adapters.live import FEED_SUBJECTS
from gateway.bootstrap import bootstrap as gateway_bootstrap
from gateway.config import Settings as GatewaySettings
from kit.cli import running
from kit.kvmirror import DIRECTORY_BUCKET, KvMirror, open_bucket
from kit.migrations import migrate
from mall_testing.demo import DemoMall, payment_notification, seed
from mall_testing.embedded import EmbeddedNats
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from member.bootstrap import bootstrap as member_bootstrap
from member.config import Settings as MemberSettings
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from parking.bootstrap import MIGRATIONS as PARKING_MIGRATIONS
from parking.bootstrap import bootstrap as parking_bootstrap
from parking.config import Settings as ParkingSettings
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.bootstrap import bootstrap as points_bootstrap
from points.config import Settings as PointsSettings

from tests.conftest import Suite, _grpc_port
from tests.test_payment_path import post, wait_for_balance

REPO = Path(__file__).resolve().parent.parent


def _load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "nats_permissions", REPO / "scripts" / "nats_permissions.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


perms = _load_renderer()
TABLE: dict[str, Any] = perms.load_table()


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: * one token, > the rest (one token at least)."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


class Server:
    def __init__(self, nats_server: EmbeddedNats, passwords: dict[str, str]) -> None:
        self.nats = nats_server
        self.passwords = passwords

    def url(self, user: str) -> str:
        """NATS_URL as the cluster builds it: nats://<user>:<password>@host:port."""
        return f"nats://{user}:{self.passwords[user]}@{self.nats.host}:{self.nats.port}"

    @contextlib.asynccontextmanager
    async def connect(self, user: str, errors: list[str]) -> AsyncIterator[Client]:
        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(self.url(user), error_cb=on_error, allow_reconnect=False, name=user)
        try:
            yield nc
        finally:
            await nc.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A fresh server per test (no stream left over from another)."""
    conf = tmp_path / "nats-auth.conf"
    conf.write_text(perms.render_conf(TABLE))
    passwords = {user: secrets.token_hex(16) for user in TABLE["users"]}
    variables = {perms.password_var(user): pw for user, pw in passwords.items()}
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)  # the server reads $<USER>_NATS_PASSWORD, as in the cluster
    try:
        embedded = EmbeddedNats(extra_args=["-c", str(conf)]).start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        yield Server(embedded, passwords)
    finally:
        embedded.stop()


async def refused(errors: list[str], subject: str, kind: str = "publish") -> None:
    """The server reported a permissions violation for this subject (nats-py lowercases it)."""
    for _ in range(100):
        if any(
            f'permissions violation for {kind} to "{subject.lower()}"' in e.lower() for e in errors
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no permissions violation for {subject}: {errors}")


def test_the_committed_server_config_is_rendered_from_the_table() -> None:
    for path, text in perms.outputs(TABLE).items():
        assert path.read_text() == text, f"{path}: run scripts/nats_permissions.py write"


def test_the_table_covers_the_code() -> None:
    assert TABLE["streams"] == STREAMS
    gateway = perms.permissions(TABLE, "gateway")["subscribe"]
    heard = [*FEED_SUBJECTS, claims_feed.EXHAUSTED, claims_feed.CLAIMED, claims_feed.TIER_CHANGED]
    for subject in heard:
        probe = subject.replace(">", "x").replace("*", "x")
        assert any(matches(p, probe) for p in gateway), subject


def test_publishing_is_limited_to_the_users_own_streams() -> None:
    for user, spec in TABLE["users"].items():
        publish = perms.permissions(TABLE, user)["publish"]
        for stream, prefix in STREAMS.items():
            owned = stream in spec.get("owns", [])
            assert matches_any(publish, f"{prefix}.some.event") == owned, (user, stream)
            assert matches_any(publish, f"$JS.API.STREAM.UPDATE.{stream}") == owned
            assert not matches_any(publish, f"$JS.API.STREAM.DELETE.{stream}")
            assert not matches_any(publish, f"$JS.API.STREAM.PURGE.{stream}")
        writes = spec.get("buckets", {}).get(DIRECTORY_BUCKET) == "write"
        assert matches_any(publish, f"$KV.{DIRECTORY_BUCKET}.some.key") == writes, user
    writers = [u for u, s in TABLE["users"].items() if s.get("buckets", {}).get("DIRECTORY")]
    assert [u for u in writers if TABLE["users"][u]["buckets"]["DIRECTORY"] == "write"] == [
        "member"
    ]


def test_the_dev_server_reads_every_users_password_from_its_secret() -> None:
    yaml = importlib.import_module("yaml")
    docs = yaml.safe_load_all((REPO / "deploy/k8s/overlays/dev/nats.yaml").read_text())
    [server] = [d for d in docs if d["kind"] == "StatefulSet"]
    [container] = server["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])}
    assert env == {perms.password_var(user): f"{user}-nats" for user in TABLE["users"]}


def matches_any(patterns: list[str], subject: str) -> bool:
    return any(matches(p, subject) for p in patterns)


async def test_each_service_does_its_work_and_is_refused_the_rest(server: Server) -> None:
    member_errors: list[str] = []
    points_errors: list[str] = []
    gateway_errors: list[str] = []
    async with (
        server.connect("member", member_errors) as member,
        server.connect("points", points_errors) as points,
        server.connect("gateway", gateway_errors) as gateway,
    ):
        # member: its streams at start (creating PAYMENTS if it is first), the directory.
        mjs = member.jetstream()
        await ensure_streams(mjs, "PAYMENTS", "MEMBER", service="member")
        directory = await open_bucket(mjs, DIRECTORY_BUCKET)
        await directory.put("mall-1.shop.7", b"store-7")
        ack = await mjs.publish("member.member.joined", b"m-1", timeout=5)
        assert ack.stream == "MEMBER"

        # points: ensures what it reads, mirrors the directory, pull-consumes MEMBER and acks.
        pjs = points.jetstream()
        await ensure_streams(pjs, "MEMBER", "POINTS", "COUPONS", service="points")
        seen: dict[str, bytes | None] = {}
        mirror = KvMirror(pjs, DIRECTORY_BUCKET, lambda k, v: seen.__setitem__(k, v))
        stop = asyncio.Event()
        mirroring = asyncio.create_task(mirror.run(stop))
        try:
            await asyncio.wait_for(mirror.ready.wait(), 10)
        finally:
            stop.set()
            await mirroring
        assert seen == {"mall-1.shop.7": b"store-7"}
        await pjs.add_consumer(
            "MEMBER",
            ConsumerConfig(
                durable_name="points-joined",
                filter_subject="member.member.joined",
                ack_policy=AckPolicy.EXPLICIT,
            ),
        )
        sub = await pjs.pull_subscribe_bind("points-joined", stream="MEMBER")
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.data == b"m-1"
        await msg.ack_sync(timeout=5)
        info = await pjs.consumer_info("MEMBER", "points-joined")
        assert (info.num_pending, info.num_ack_pending, info.ack_floor.stream_seq) == (0, 0, 1)

        # gateway: publishes payments with a JetStream ack, hears the points feed live.
        gjs = gateway.jetstream()
        await ensure_streams(gjs, "PAYMENTS", service="gateway")
        await open_bucket(gjs, DIRECTORY_BUCKET, replicas=1, owned=False)
        ack = await gjs.publish("payments.payment.captured", b"tx-1", timeout=5)
        assert ack.stream == "PAYMENTS"
        heard: asyncio.Queue[str] = asyncio.Queue()

        async def hear(msg: Msg) -> None:
            heard.put_nowait(msg.subject)

        await gateway.subscribe("points.points.>", cb=hear)
        await gateway.flush()
        await pjs.publish("points.points.credited", b"p-1", timeout=5)
        # 20 s: a loaded CI box once took over 5 s here (the servers' errors say if not that).
        try:
            assert await asyncio.wait_for(heard.get(), 20) == "points.points.credited"
        except TimeoutError:
            errors = gateway_errors
            raise AssertionError(f"the gateway heard nothing; server errors: {errors}") from None

        # Refused: the gateway forging points or member events (core and JetStream alike).
        await gateway.publish("points.points.credited", b"forged")
        await refused(gateway_errors, "points.points.credited")
        with pytest.raises(nats.errors.TimeoutError):
            await gjs.publish("member.payment.attributed", b"forged", timeout=1)
        await refused(gateway_errors, "member.payment.attributed")
        # ... rewriting another stream (a source into MEMBER would forge events too)...
        with pytest.raises(nats.errors.TimeoutError):
            await gateway.request("$JS.API.STREAM.UPDATE.MEMBER", b"{}", timeout=1)
        await refused(gateway_errors, "$JS.API.STREAM.UPDATE.MEMBER")
        # ... or hearing what it has no use for.
        await gateway.subscribe("member.payment.attributed")
        await refused(gateway_errors, "member.payment.attributed", kind="subscription")

        # Refused: points writing the directory, or deleting member's stream.
        with pytest.raises(nats.errors.TimeoutError):
            await pjs.publish("$KV.DIRECTORY.mall-1.shop.7", b"hijacked", timeout=1)
        await refused(points_errors, "$KV.DIRECTORY.mall-1.shop.7")
        with pytest.raises(nats.errors.TimeoutError):
            await points.request("$JS.API.STREAM.DELETE.MEMBER", b"", timeout=1)
        await refused(points_errors, "$JS.API.STREAM.DELETE.MEMBER")

        # Nothing forged got in: the streams hold exactly what their owners published.
        assert (await directory.get("mall-1.shop.7")).value == b"store-7"
        for js, stream in ((pjs, "POINTS"), (mjs, "MEMBER"), (gjs, "PAYMENTS")):
            assert (await js.stream_info(stream)).state.messages == 1, stream
        assert not member_errors
    # The server logs each refusal (what the payment-path test below finds none of).
    assert "Publish Violation" in server.nats.log_path.read_text()


async def test_ops_reads_stream_and_consumer_info_and_touches_nothing(server: Server) -> None:
    member_errors: list[str] = []
    ops_errors: list[str] = []
    async with (
        server.connect("member", member_errors) as member,
        server.connect("ops", ops_errors) as ops,
    ):
        mjs = member.jetstream()
        await ensure_streams(mjs, "MEMBER")
        await mjs.add_consumer("MEMBER", ConsumerConfig(durable_name="member-ops-probe"))
        ojs = ops.jetstream()
        assert (await ojs.stream_info("MEMBER")).config.name == "MEMBER"
        assert (await ojs.consumer_info("MEMBER", "member-ops-probe")).name == "member-ops-probe"
        with pytest.raises(nats.errors.TimeoutError):
            await ojs.publish("member.member.joined", b"forged", timeout=1)
        await refused(ops_errors, "member.member.joined")
        with pytest.raises(nats.errors.TimeoutError):
            await ops.request("$JS.API.STREAM.PURGE.MEMBER", b"", timeout=1)
        await refused(ops_errors, "$JS.API.STREAM.PURGE.MEMBER")


async def test_a_wrong_password_is_refused(server: Server) -> None:
    impostor = Server(server.nats, {"member": "not-the-password"})
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        async with impostor.connect("member", []):
            pass
    # nats-py leaves the refused connection's socket to the collector.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


async def test_the_payment_path_runs_with_each_service_as_its_user(
    server: Server, fresh_database: FreshDatabase
) -> None:
    """member, points and the gateway, each logged in as its own user: a payment the gateway
    takes becomes a member and points, every hop allowed by the table."""
    member_db = await fresh_database("member")
    points_db = await fresh_database("points")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    common: dict[str, Any] = {"grpc_port": 0, "log_format": "console", "log_level": "warning"}
    async with contextlib.AsyncExitStack() as stack:
        member = await stack.enter_async_context(
            member_bootstrap(
                MemberSettings(database_url=member_db, nats_url=server.url("member"), **common)
            )
        )
        await stack.enter_async_context(running(member))
        points = await stack.enter_async_context(
            points_bootstrap(
                PointsSettings(database_url=points_db, nats_url=server.url("points"), **common)
            )
        )
        await stack.enter_async_context(running(points))
        member_port = await _grpc_port(member.grpc)
        points_port = await _grpc_port(points.grpc)
        gateway = await stack.enter_async_context(
            gateway_bootstrap(
                GatewaySettings(
                    nats_url=server.url("gateway"),
                    http_port=0,
                    wechatpay_accept_unsigned=True,
                    member_grpc_target=f"127.0.0.1:{member_port}",
                    points_grpc_target=f"127.0.0.1:{points_port}",
                    log_format="console",
                    log_level="warning",
                )
            )
        )
        await stack.enter_async_context(running(gateway))
        for _ in range(200):
            if gateway.http.port:
                break
            await asyncio.sleep(0.02)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        suite = Suite(
            gateway_url=f"http://127.0.0.1:{gateway.http.port}",
            member_db=member_db,
            points_db=points_db,
            member_grpc=f"127.0.0.1:{member_port}",
            points_grpc=f"127.0.0.1:{points_port}",
            nats_url="",
            http=http,
        )
        mall = await seed(suite.member_grpc, DemoMall.unique())
        openid = f"o-{uuid.uuid4().hex}"
        notification = payment_notification(mall, openid=openid, amount_fen=12_345)
        assert await post(suite, notification) == 204
        body = await wait_for_balance(suite, mall, openid, 123)
        assert body["lifetime_earned"] == 123
    # Nothing any of them did on the way (start, consumers, directory, live feeds) was refused.
    log = server.nats.log_path.read_text()
    assert "Violation" not in log, [line for line in log.splitlines() if "Violation" in line]


async def test_coupons_and_parking_start_and_consume_as_their_users(
    server: Server, fresh_database: FreshDatabase
) -> None:
    """Their starts (streams, DIRECTORY, retired consumers, durable consumers, the directory
    mirrors) pass under their users, and their consumers are in place."""
    coupons_db = await fresh_database("coupons")
    parking_db = await fresh_database("parking")
    await migrate(coupons_db, COUPONS_MIGRATIONS)
    await migrate(parking_db, PARKING_MIGRATIONS)
    common: dict[str, Any] = {"grpc_port": 0, "log_format": "console", "log_level": "warning"}
    coupons_settings = CouponsSettings(
        database_url=coupons_db, nats_url=server.url("coupons"), **common
    )
    parking_settings = ParkingSettings(
        database_url=parking_db, nats_url=server.url("parking"), points_grpc_target="", **common
    )
    commitments = CommitmentSettings(commitment_sweep_interval_s=3600, wechatpay_api_base="")
    async with (
        coupons_bootstrap(coupons_settings, commitments) as coupons,
        running(coupons),
        parking_bootstrap(parking_settings) as parking,
        running(parking),
        server.connect("ops", []) as ops,
    ):
        ojs = ops.jetstream()

        async def consumers(stream: str) -> set[str]:
            return {c.name for c in await ojs.consumers_info(stream)}

        for _ in range(600):
            on_member = await consumers("MEMBER")
            if {"parking-payment-attributed", "parking-directory"} <= on_member and any(
                name.startswith("coupons-") for name in on_member
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"consumers on MEMBER: {await consumers('MEMBER')}")
        assert "parking-coupon-claimed" in await consumers("COUPONS")
        assert any(name.startswith("coupons-") for name in await consumers("PARKING"))
    log = server.nats.log_path.read_text()
    assert "Violation" not in log, [line for line in log.splitlines() if "Violation" in line]
