"""Coupons through the real gateway, with the real coupons, member and points services on real
PostgreSQL and NATS: the flash grab (concurrent claims coalesced into ClaimCoupons, sold out
from memory, exactly the stock issued, none twice, retries give the same coupon), refusals as
problem+json codes, claim by code, the wallet and the card's coupons section, commitment
cards; and the claim coalescer and sold-out memory alone, with a fake coupons.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import nats
import pytest
from coupons.bootstrap import MIGRATIONS as COUPONS_MIGRATIONS
from coupons.bootstrap import bootstrap as coupons_bootstrap
from coupons.config import Settings as CouponsSettings
from gateway.adapters.claims_feed import ClaimsFeed
from gateway.adapters.coupons import Audience
from gateway.adapters.tokens import AUDIENCE, ISSUER, SessionTokens
from gateway.bootstrap import bootstrap as gateway_bootstrap
from gateway.config import Settings as GatewaySettings
from gateway.domain.claims import Claimed, ClaimRequest, refusal
from gateway.domain.shoppers import Session
from gateway.entrypoints.coupons import COUPONS
from gateway.service_layer.claims import Claims, SoldOutMemory
from hypothesis import given, settings
from hypothesis import strategies as st
from kit.cli import Roles, running
from kit.errors import AppError, Unauthenticated
from kit.migrations import migrate
from kit.proto import timestamp
from mall.coupons.v1 import commitments_service_pb2 as cpb
from mall.coupons.v1 import commitments_service_pb2_grpc as cpb_grpc
from mall.coupons.v1 import coupons_pb2, coupons_service_pb2, coupons_service_pb2_grpc
from mall.coupons.v1 import events_pb2 as coupons_events
from mall.member.v1 import events_pb2 as member_events
from mall.member.v1 import member_pb2, member_service_pb2, member_service_pb2_grpc
from mall_testing.demo import DemoMall, seed
from mall_testing.plugin import FreshDatabase
from member.bootstrap import MIGRATIONS as MEMBER_MIGRATIONS
from member.bootstrap import bootstrap as member_bootstrap
from member.config import Settings as MemberSettings
from points.bootstrap import MIGRATIONS as POINTS_MIGRATIONS
from points.bootstrap import bootstrap as points_bootstrap
from points.config import Settings as PointsSettings

PROBLEM = "application/problem+json"


async def _port(get: Any) -> int:
    for _ in range(500):
        if port := get():
            return int(port)
        await asyncio.sleep(0.01)
    raise RuntimeError("a server never bound its port")


@dataclass
class Stack:
    url: str
    http: aiohttp.ClientSession
    mall: DemoMall
    gateway: Roles
    tokens: SessionTokens
    members: member_service_pb2_grpc.MemberServiceAsyncStub
    directory: member_service_pb2_grpc.DirectoryServiceAsyncStub
    coupons: coupons_service_pb2_grpc.CouponsServiceAsyncStub
    commitments: cpb_grpc.CommitmentServiceAsyncStub

    @property
    def claims(self) -> Claims:
        claims: Claims = self.gateway.http.app[COUPONS].claims
        return claims

    async def call(
        self, method: str, path: str, *, token: str, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 400:
                assert resp.content_type == PROBLEM, data
            return resp.status, data

    async def shoppers(self, n: int, tier: str = "") -> list[tuple[str, str]]:
        """n members joined through member's API: [(access token, member id)], tokens minted
        with the gateway's signing key as POST /v1/session would."""

        async def one() -> tuple[str, str]:
            openid = f"o-{uuid.uuid4().hex}"
            reply = await self.members.JoinMember(
                member_service_pb2.JoinMemberRequest(
                    mall_id=self.mall.mall_id,
                    identity=member_pb2.Identity(
                        identity_type=member_pb2.IDENTITY_TYPE_OPENID, value=openid
                    ),
                    channel=member_pb2.JOIN_CHANNEL_MINI_PROGRAM,
                    phone=f"+86136{secrets.randbelow(10**8):08d}",
                ),
                timeout=10,
            )
            member_id = reply.member.member_id
            session = Session(self.mall.mall_id, openid, member_id)
            return self.tokens.issue(session).access_token, member_id

        return list(await asyncio.gather(*(one() for _ in range(n))))

    async def stock(self, **fields: Any) -> str:
        now = datetime.now(UTC)
        base: dict[str, Any] = {
            "mall_id": self.mall.mall_id,
            "title": "满100减20",
            "coupon_type": coupons_pb2.COUPON_TYPE_FIXED_AMOUNT,
            "discount_fen": 2000,
            "threshold_fen": 10000,
            "max_coupons": 100,
            "max_per_member": 1,
            "claim_starts_at": timestamp(now - timedelta(hours=1)),
            "claim_ends_at": timestamp(now + timedelta(days=1)),
            "valid_days": 30,
        }
        base.update(fields)
        reply = await self.coupons.CreateStock(
            coupons_service_pb2.CreateStockRequest(
                stock=coupons_pb2.Stock(**base), request_id=uuid.uuid4().hex
            )
        )
        return str(reply.stock.stock_id)


@pytest.fixture(scope="module")
async def stack(
    fresh_database: FreshDatabase, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    member_db, points_db = await fresh_database("member"), await fresh_database("points")
    coupons_db = await fresh_database("coupons")
    await migrate(member_db, MEMBER_MIGRATIONS)
    await migrate(points_db, POINTS_MIGRATIONS)
    await migrate(coupons_db, COUPONS_MIGRATIONS)
    common: dict[str, Any] = {
        "nats_url": nats_url, "grpc_port": 0, "log_format": "console", "log_level": "warning"
    }  # fmt: skip
    mall = DemoMall.unique()
    folder: Path = tmp_path_factory.mktemp("gateway-coupons")
    (folder / "miniprograms.json").write_text(json.dumps({mall.appid: secrets.token_hex(16)}))
    signing_key = secrets.token_urlsafe(48)
    async with contextlib.AsyncExitStack() as stack:
        member = await stack.enter_async_context(
            member_bootstrap(MemberSettings(database_url=member_db, **common))
        )
        await stack.enter_async_context(running(member))
        points = await stack.enter_async_context(
            points_bootstrap(PointsSettings(database_url=points_db, **common))
        )
        await stack.enter_async_context(running(points, ("serve",)))
        coupons = await stack.enter_async_context(
            coupons_bootstrap(CouponsSettings(database_url=coupons_db, **common))
        )
        await stack.enter_async_context(running(coupons, ("serve", "relay", "consume")))
        member_port = await _port(lambda: member.grpc.port if member.grpc else 0)
        points_port = await _port(lambda: points.grpc.port if points.grpc else 0)
        coupons_port = await _port(lambda: coupons.grpc.port if coupons.grpc else 0)
        await seed(f"127.0.0.1:{member_port}", mall)
        gateway = await stack.enter_async_context(
            gateway_bootstrap(
                GatewaySettings(
                    nats_url=nats_url,
                    http_port=0,
                    member_grpc_target=f"127.0.0.1:{member_port}",
                    points_grpc_target=f"127.0.0.1:{points_port}",
                    coupons_grpc_target=f"127.0.0.1:{coupons_port}",
                    miniprogram_secrets_file=folder / "miniprograms.json",
                    session_signing_key=signing_key,  # type: ignore[arg-type]
                    rate_limit_per_ip="",  # off here: test_gateway_openapi proves the limits
                    rate_limit_per_member="",
                    card_section_deadline_s=2.0,
                    claim_sold_out_memory_s=30.0,  # one flag outlives the test
                    log_format="console",
                    log_level="warning",
                )
            )
        )
        await stack.enter_async_context(running(gateway))
        http_port = await _port(lambda: gateway.http.port)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        member_channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{member_port}")
        )
        coupons_channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{coupons_port}")
        )
        yield Stack(
            f"http://127.0.0.1:{http_port}",
            http,
            mall,
            gateway,
            SessionTokens(signing_key, access_ttl_s=3600, refresh_ttl_s=3600),
            member_service_pb2_grpc.MemberServiceStub(member_channel),
            member_service_pb2_grpc.DirectoryServiceStub(member_channel),
            coupons_service_pb2_grpc.CouponsServiceStub(coupons_channel),
            cpb_grpc.CommitmentServiceStub(coupons_channel),
        )


# -- the flash grab ----------------------------------------------------------------------------


async def test_flash_grab_issues_exactly_the_stock_none_twice_every_loser_sold_out(
    stack: Stack,
) -> None:
    stock_id = await stack.stock(max_coupons=12)
    shoppers = await stack.shoppers(80)
    requests = {member_id: uuid.uuid4().hex for _, member_id in shoppers}
    batches_before = stack.claims.batcher.batches

    async def press(token: str, member_id: str) -> tuple[str, int, dict[str, Any]]:
        body = {"stock_id": stock_id, "request_id": requests[member_id]}
        status, answer = await stack.call("POST", "/v1/me/coupons/claims", token=token, body=body)
        return member_id, status, answer

    # Every shopper presses once, all at once.
    results = await asyncio.gather(*(press(t, m) for t, m in shoppers))

    winners = {m: a for m, status, a in results if status == 201}
    losers = [(status, a) for _, status, a in results if status != 201]
    assert len(winners) == 12
    assert len({a["coupon_id"] for a in winners.values()}) == 12
    assert all(a["stock_id"] == stock_id and a["status"] == "available" for a in winners.values())
    assert Counter(status for status, _ in losers) == {409: 68}
    assert {a["code"] for _, a in losers} == {"sold_out"}
    assert {a["reason"] for _, a in losers} == {"stock_sold_out"}
    # Coalesced: far fewer ClaimCoupons calls than claims.
    assert stack.claims.batcher.batches - batches_before < 40

    # A second wave on the exhausted stock is answered from memory, without coupons.
    forwarded = stack.claims.batcher.items
    answered = stack.claims.memory.answered
    losers_tokens = [(t, m) for t, m in shoppers if m not in winners]
    again = await asyncio.gather(*(press(t, m) for t, m in losers_tokens[:20]))
    assert {(status, a["code"]) for _, status, a in again} == {(409, "sold_out")}
    assert stack.claims.memory.answered - answered == 20
    assert stack.claims.batcher.items == forwarded

    # A winner retrying its request_id gets the same coupon, although the stock is sold out.
    token_of = dict((m, t) for t, m in shoppers)
    retried = await asyncio.gather(*(press(token_of[m], m) for m in list(winners)[:5]))
    for member_id, status, answer in retried:
        assert status == 201
        assert answer["coupon_id"] == winners[member_id]["coupon_id"]

    # The gateway counts them by outcome (Prometheus).
    async with stack.http.get(stack.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'mall_gateway_coupon_claims_total{outcome="sold_out"}' in metrics

    # coupons agrees: exactly 12 issued.
    reply = await stack.coupons.GetStock(
        coupons_service_pb2.GetStockRequest(mall_id=stack.mall.mall_id, stock_id=stock_id)
    )
    assert reply.stock.claimed_count == 12


async def test_one_shopper_pressing_many_times_gets_one_coupon(stack: Stack) -> None:
    stock_id = await stack.stock(max_coupons=50)
    ((token, _),) = await stack.shoppers(1)

    async def press(request_id: str) -> tuple[int, dict[str, Any]]:
        body = {"stock_id": stock_id, "request_id": request_id}
        return await stack.call("POST", "/v1/me/coupons/claims", token=token, body=body)

    results = await asyncio.gather(*(press(uuid.uuid4().hex) for _ in range(15)))

    assert sorted(status for status, _ in results).count(201) == 1
    assert {a["code"] for status, a in results if status != 201} == {"limit_reached"}


async def _events(stack: Stack, token: str) -> aiohttp.ClientResponse:
    resp = await stack.http.get(
        stack.url + "/v1/me/events", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 200
    return resp


async def _next_data(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    """The next SSE event (name, data), comments (heartbeats) skipped."""
    event, data = "message", []
    async with asyncio.timeout(10):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
            elif line == "" and data:
                return event, json.loads("\n".join(data))


async def test_a_claimed_coupon_is_pushed_live_to_its_member_only(stack: Stack) -> None:
    stock_id = await stack.stock(max_coupons=5)
    (winner, _), (other, _) = await stack.shoppers(2)
    mine, theirs = await _events(stack, winner), await _events(stack, other)
    try:
        assert (await _next_data(mine))[0] == (await _next_data(theirs))[0] == "ready"
        status, coupon = await stack.call(
            "POST",
            "/v1/me/coupons/claims",
            token=winner,
            body={"stock_id": stock_id, "request_id": "live-1"},
        )
        assert status == 201

        kind, pushed = await _next_data(mine)
        assert (kind, pushed["type"]) == ("coupon", "coupon.issued")
        assert (pushed["coupon_id"], pushed["stock_id"]) == (coupon["coupon_id"], stock_id)
        with pytest.raises(TimeoutError):  # nothing for the other member
            async with asyncio.timeout(1):
                await _next_data(theirs)
    finally:
        mine.close()
        theirs.close()


# -- refusals, claim by code -------------------------------------------------------------------


async def test_refusals_are_problems_with_stable_codes(stack: Stack) -> None:
    later = datetime.now(UTC) + timedelta(hours=2)
    not_open = await stack.stock(
        claim_starts_at=timestamp(later), claim_ends_at=timestamp(later + timedelta(days=1))
    )
    gold_only = await stack.stock(audience_tiers=["gold-only-tier"])
    ((token, _),) = await stack.shoppers(1)

    async def claim(stock_id: str) -> tuple[int, dict[str, Any]]:
        body = {"stock_id": stock_id, "request_id": uuid.uuid4().hex}
        return await stack.call("POST", "/v1/me/coupons/claims", token=token, body=body)

    status, answer = await claim(not_open)
    assert (status, answer["code"], answer["reason"]) == (409, "not_open_yet", "claim_not_started")
    status, answer = await claim(gold_only)
    assert (status, answer["code"], answer["reason"]) == (403, "not_eligible", "tier_not_eligible")
    status, answer = await claim("no-such-stock")
    assert (status, answer["code"]) == (404, "stock_not_found")
    status, answer = await stack.call(
        "POST", "/v1/me/coupons/claims", token=token, body={"stock_id": "x"}
    )
    assert (status, answer["code"]) == (400, "invalid_request_id")


async def test_claim_by_code_records_the_channel_and_retries_give_the_same_coupon(
    stack: Stack,
) -> None:
    stock_id = await stack.stock()
    code = f"CARD-{uuid.uuid4().hex[:12]}"
    await stack.coupons.CreateClaimCode(
        coupons_service_pb2.CreateClaimCodeRequest(
            claim_code=coupons_pb2.ClaimCode(
                mall_id=stack.mall.mall_id,
                code=code,
                stock_id=stock_id,
                channel=coupons_pb2.CLAIM_CHANNEL_PACKAGE_CARD,
            )
        )
    )
    ((token, _),) = await stack.shoppers(1)
    body = {"code": code, "request_id": uuid.uuid4().hex}

    status, first = await stack.call(
        "POST", "/v1/me/coupons/claims/by-code", token=token, body=body
    )
    _, again = await stack.call("POST", "/v1/me/coupons/claims/by-code", token=token, body=body)
    body = {"code": "NO-SUCH-CODE", "request_id": uuid.uuid4().hex}
    missing, problem = await stack.call(
        "POST", "/v1/me/coupons/claims/by-code", token=token, body=body
    )

    assert status == 201
    assert (first["stock_id"], first["channel"]) == (stock_id, "package_card")
    assert again["coupon_id"] == first["coupon_id"]
    assert (missing, problem["code"]) == (404, "code_not_found")


# -- the wallet and the card ----------------------------------------------------------------


async def test_wallet_pages_and_filters_and_the_card_counts_usable_coupons(stack: Stack) -> None:
    stocks = [await stack.stock(title=f"券{i}") for i in range(3)]
    ((token, _),) = await stack.shoppers(1)
    claimed = []
    for stock_id in stocks:
        body = {"stock_id": stock_id, "request_id": uuid.uuid4().hex}
        status, coupon = await stack.call("POST", "/v1/me/coupons/claims", token=token, body=body)
        assert status == 201
        claimed.append(coupon["coupon_id"])

    status, first = await stack.call("GET", "/v1/me/coupons?limit=2", token=token)
    _, second = await stack.call(
        "GET", f"/v1/me/coupons?limit=2&cursor={first['next_cursor']}", token=token
    )
    _, usable = await stack.call("GET", "/v1/me/coupons?status=usable", token=token)
    _, used = await stack.call("GET", "/v1/me/coupons?status=used", token=token)
    bad, problem = await stack.call("GET", "/v1/me/coupons?status=lost", token=token)

    assert status == 200
    listed = [c["coupon_id"] for c in first["coupons"] + second["coupons"]]
    assert sorted(listed) == sorted(claimed)
    assert len(first["coupons"]) == 2
    assert second["next_cursor"] is None
    assert len(usable["coupons"]) == 3
    assert used["coupons"] == []
    assert (bad, problem["code"]) == (400, "invalid_status")

    status, card = await stack.call("GET", "/v1/me/card", token=token)
    assert status == 200
    assert card["coupons"]["status"] == "ok"
    assert card["coupons"]["usable"] == 3
    assert card["coupons"]["next_expiry"] is not None


# -- commitment cards --------------------------------------------------------------------------


async def test_commitment_card_accepted_once_and_listed(stack: Stack) -> None:
    tenant = stack.mall.stores[0]
    issued = await stack.directory.IssueCredential(
        member_service_pb2.IssueCredentialRequest(
            mall_id=stack.mall.mall_id, tenant_id=tenant.tenant_id
        )
    )
    credential = f"{issued.credential.credential_id}.{issued.secret}"
    offer = cpb.CommitmentOffer(
        mall_id=stack.mall.mall_id,
        title="15天内消费3次，每次立减1.5元",
        store_ids=[tenant.store_id],
        purchases_required=3,
        window_days=15,
        min_amount_fen=2000,
        discount_fen=150,
    )
    offer_id = ""
    refusals: set[tuple[grpc.StatusCode, str]] = set()
    for _ in range(200):  # until coupons' copy of the credentials has it (an event away)
        try:
            reply = await stack.commitments.CreateCommitmentOffer(
                cpb.CreateCommitmentOfferRequest(offer=offer, request_id=uuid.uuid4().hex),
                metadata=(("x-mall-credential", credential),),
            )
        except grpc.aio.AioRpcError as exc:
            refusals.add((exc.code(), exc.details() or ""))
            await asyncio.sleep(0.05)
            continue
        offer_id = reply.offer.offer_id
        break
    assert offer_id, refusals
    assert {code for code, _ in refusals} <= {grpc.StatusCode.UNAUTHENTICATED}
    ((token, _),) = await stack.shoppers(1)

    status, card = await stack.call(
        "POST", "/v1/me/commitment-cards", token=token, body={"offer_id": offer_id}
    )
    _, again = await stack.call(
        "POST", "/v1/me/commitment-cards", token=token, body={"offer_id": offer_id}
    )
    _, listed = await stack.call("GET", "/v1/me/commitment-cards", token=token)
    missing, problem = await stack.call(
        "POST", "/v1/me/commitment-cards", token=token, body={"offer_id": "no-such-offer"}
    )

    assert status == 200
    assert (card["status"], card["purchases_required"], card["discount_fen"]) == ("active", 3, 150)
    assert card["store_ids"] == [tenant.store_id]
    assert card["clawback"] is None
    assert again["card_id"] == card["card_id"]
    assert [c["card_id"] for c in listed["cards"]] == [card["card_id"]]
    assert (missing, problem["code"]) == (404, "offer_not_found")


# -- the coalescer and the sold-out memory alone (a fake coupons) -----------------------------


class FakeCoupons:
    """A stock of ``left`` coupons; records each batch it is sent."""

    def __init__(self, left: int, audience: Audience | None = None) -> None:
        self.left = left
        self.batches: list[int] = []
        self.held: dict[tuple[str, str], dict[str, object]] = {}
        self._audience = audience or Audience((), ())
        self.profiles = 0

    async def claim_batch(self, claims: Sequence[ClaimRequest]) -> list[Claimed]:
        self.batches.append(len(claims))
        await asyncio.sleep(0.001)
        answers = []
        for c in claims:
            key = (c.member_id, c.request_id)
            if key in self.held:
                answers.append(Claimed(self.held[key]))
            elif any(member == c.member_id for member, _ in self.held):  # one per member
                answers.append(Claimed(None, refusal("member_limit_reached")))
            elif self.left > 0:
                self.left -= 1
                self.held[key] = {"coupon_id": f"c-{len(self.held)}", "tier": c.tier_code}
                answers.append(Claimed(self.held[key]))
            else:
                answers.append(Claimed(None, refusal("stock_sold_out")))
        return answers

    async def audience(self, mall_id: str, stock_id: str) -> Audience:
        return self._audience

    async def profile(self, mall_id: str, member_id: str) -> tuple[str, tuple[str, ...]]:
        self.profiles += 1
        return "gold", ()


def _claim(member: str, request_id: str = "r1") -> ClaimRequest:
    return ClaimRequest("m", member, "s", request_id)


async def test_concurrent_claims_share_bounded_batches_and_memory_answers_sold_out() -> None:
    fake = FakeCoupons(left=10)
    claims = Claims(fake, SoldOutMemory(sold_out_s=60), max_batch=50, workers=2)

    async def one(i: int) -> str:
        try:
            await claims.claim(_claim(f"member-{i}"))
        except AppError as exc:
            return exc.code
        return "claimed"

    outcomes = Counter(await asyncio.gather(*(one(i) for i in range(300))))

    assert outcomes == {"claimed": 10, "sold_out": 290}
    assert max(fake.batches) <= 50
    assert len(fake.batches) < 20  # coalesced, not one call per claim
    # Once a batch said sold out, later claims were answered from memory, not sent.
    assert sum(fake.batches) + claims.memory.answered == 300
    assert claims.memory.answered > 0


async def test_a_holder_retry_passes_the_memory_and_the_flag_expires() -> None:
    now = [0.0]
    fake = FakeCoupons(left=1)
    memory = SoldOutMemory(sold_out_s=2.0, clock=lambda: now[0])
    claims = Claims(fake, memory)
    first = await claims.claim(_claim("winner"))
    with pytest.raises(AppError) as lost:
        await claims.claim(_claim("loser"))
    assert lost.value.code == "sold_out"
    sent = sum(fake.batches)

    with pytest.raises(AppError):
        await claims.claim(_claim("loser"))  # from memory
    assert sum(fake.batches) == sent
    assert await claims.claim(_claim("winner")) == first  # the holder's retry is sent
    assert sum(fake.batches) == sent + 1

    now[0] = 3.0  # the flag is gone: coupons is asked again
    with pytest.raises(AppError):
        await claims.claim(_claim("loser"))
    assert sum(fake.batches) == sent + 2


async def test_the_member_tier_is_read_only_for_a_stock_with_an_audience() -> None:
    open_to_all = FakeCoupons(left=5)
    await Claims(open_to_all, SoldOutMemory()).claim(_claim("a"))
    tiered = FakeCoupons(left=5, audience=Audience(("gold",), ()))
    coupon = await Claims(tiered, SoldOutMemory()).claim(_claim("a"))

    assert open_to_all.profiles == 0
    assert tiered.profiles == 1
    assert coupon["tier"] == "gold"


async def test_a_members_tier_is_kept_briefly_and_forgotten_when_it_changes() -> None:
    now = [0.0]
    tiered = FakeCoupons(left=10, audience=Audience(("gold",), ()))
    claims = Claims(tiered, SoldOutMemory(), profile_s=10.0, clock=lambda: now[0])

    async def press(request_id: str) -> None:
        with contextlib.suppress(AppError):  # the second press on is limit_reached
            await claims.claim(_claim("a", request_id))

    await press("r1")
    await press("r2")
    assert tiered.profiles == 1  # the tier came from memory
    claims.forget_profile("m", "a")  # member.tier.changed
    await press("r3")
    assert tiered.profiles == 2
    now[0] = 11.0  # kept no longer than profile_s
    await press("r4")
    assert tiered.profiles == 3


async def test_the_feed_learns_exhausted_stocks_holders_and_tier_changes(nats_url: str) -> None:
    mall_id, stock_id, member_id = f"mall-{uuid.uuid4().hex[:8]}", "s-1", str(uuid.uuid4())
    memory = SoldOutMemory(sold_out_s=60)
    forgotten: list[tuple[str, str]] = []
    heard = asyncio.Event()

    def forget(mall: str, member: str) -> None:
        forgotten.append((mall, member))
        heard.set()

    nc = await nats.connect(nats_url)
    feed = ClaimsFeed(nc, memory, forget=forget)
    stop = asyncio.Event()
    running_feed = asyncio.create_task(feed.run(stop))
    try:
        await feed.subscribed.wait()
        await nc.publish(
            "coupons.coupon.claimed",
            coupons_events.CouponClaimed(
                mall_id=mall_id, stock_id=stock_id, member_id=member_id
            ).SerializeToString(),
        )
        await nc.publish(
            "coupons.stock.exhausted",
            coupons_events.StockExhausted(mall_id=mall_id, stock_id=stock_id).SerializeToString(),
        )
        await nc.publish(
            "member.tier.changed",
            member_events.TierChanged(mall_id=mall_id, member_id=member_id).SerializeToString(),
        )
        await nc.flush()
        async with asyncio.timeout(5):  # core NATS keeps one publisher's order
            await heard.wait()
    finally:
        stop.set()
        await running_feed
        await nc.close()

    loser = ClaimRequest(mall_id, str(uuid.uuid4()), stock_id, "r")
    holder = ClaimRequest(mall_id, member_id, stock_id, "r")
    assert memory.refusal(loser) == "stock_sold_out"
    assert memory.refusal(holder) is None  # a holder's retry still goes to coupons
    assert (mall_id, member_id) in forgotten


@settings(max_examples=40, deadline=None)
@given(
    stock=st.integers(1, 10),
    presses=st.lists(st.integers(0, 7), min_size=1, max_size=60),
    max_batch=st.integers(1, 20),
    workers=st.integers(1, 4),
    remember_s=st.sampled_from([0.0, 60.0]),
)
async def test_for_any_presses_batching_and_memory_each_member_gets_at_most_one_of_the_stock(
    stock: int, presses: list[int], max_batch: int, workers: int, remember_s: float
) -> None:
    fake = FakeCoupons(left=stock)
    claims = Claims(
        fake, SoldOutMemory(sold_out_s=remember_s), max_batch=max_batch, workers=workers
    )
    requests = [(f"member-{m}", uuid.uuid4().hex) for m in presses]

    async def one(member: str, request_id: str) -> dict[str, object] | str:
        try:
            return await claims.claim(_claim(member, request_id))
        except AppError as exc:
            return exc.code

    answers = await asyncio.gather(*(one(m, r) for m, r in requests))

    won = {req: a for req, a in zip(requests, answers, strict=True) if isinstance(a, dict)}
    assert len({a["coupon_id"] for a in won.values()}) == min(stock, len(set(presses)))
    assert len({member for member, _ in won}) == len(won)  # nobody twice
    assert {a for a in answers if isinstance(a, str)} <= {"sold_out", "limit_reached"}
    assert sum(fake.batches) + claims.memory.answered == len(presses)  # each press once
    for (member, request_id), coupon in won.items():  # a winner's retry: the same coupon
        assert await claims.claim(_claim(member, request_id)) == coupon


# -- session tokens: what a flash grab's crowd may send ---------------------------------------


def test_session_tokens_of_every_forged_shape_are_refused() -> None:
    key = "k" * 64  # long enough for HS512 too (one of the refused tokens uses it)
    tokens = SessionTokens(key, access_ttl_s=60, refresh_ttl_s=600)
    pair = tokens.issue(Session("mall-1", "o-1", "m-1"))
    header, payload, signature = pair.access_token.split(".")
    assert tokens.read_access(pair.access_token).member_id == "m-1"

    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "typ": "access", "jti": "j", "iat": now,
              "exp": now + 60, "mall": "mall-1", "sub": "o-1", "mid": "m-2"}  # fmt: skip
    other_payload = jwt.encode(claims, key, algorithm="HS256").split(".")[1]
    refused = [
        f"{header}.{other_payload}.{signature}",  # another payload under this signature
        SessionTokens("x" * 40, access_ttl_s=60, refresh_ttl_s=600)
        .issue(Session("mall-1", "o-1", "m-1"))
        .access_token,  # another key
        jwt.encode({**claims, "aud": "someone-else"}, key, algorithm="HS256"),
        jwt.encode({**claims, "iss": "someone-else"}, key, algorithm="HS256"),
        jwt.encode({**claims, "exp": now - 1}, key, algorithm="HS256"),  # expired
        jwt.encode({k: v for k, v in claims.items() if k != "jti"}, key, algorithm="HS256"),
        jwt.encode(claims, key, algorithm="HS512"),  # not the allowed algorithm
        jwt.encode(claims, "", algorithm="none"),  # unsigned
        f"{header}.{payload}.",
        f"{header}.{payload}",
        f"{header}.%%%.{signature}",
        f"{pair.access_token}!!!!",  # junk after the signature (PyJWT's GHSA-hxm8-2xgr-2p9m)
        f"{pair.access_token}=",
        f"{header}.{base64.urlsafe_b64encode(b'[1, 2]').decode().rstrip('=')}.{signature}",
        pair.refresh_token,  # the wrong kind
    ]
    for token in refused:
        with pytest.raises(Unauthenticated):
            tokens.read_access(token)
    assert tokens.read_access(jwt.encode(claims, key, algorithm="HS256")).member_id == "m-2"


def test_every_limit_and_sold_out_reason_of_coupons_has_a_gateway_code() -> None:
    """A reason coupons adds without a code here would reach shoppers as `invalid_claim`."""
    from coupons.domain import claims as coupons_claims

    reasons = {
        value.reason
        for value in vars(coupons_claims).values()
        if isinstance(value, coupons_claims.Refusal)
    }
    assert {"member_daily_limit_reached", "stock_sold_out_today"} <= reasons
    for reason in reasons:
        assert refusal(reason).code != "invalid_claim", reason
    assert refusal("member_daily_limit_reached").code == "limit_reached"
