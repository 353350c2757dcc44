"""gRPC servicer: stocks, claims (one or a batch), the wallet, redemption, rules, codes and
figures. Translation only: the rules live in the domain, the use cases in service_layer."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from kit.batching import Batcher
from kit.db import Connection
from kit.directory import Directory
from kit.errors import AppError, Conflict, Forbidden, InvalidInput, NotFound
from kit.grpc_errors import rpc_code
from kit.metrics import GRPC_STREAM_MESSAGES
from kit.proto import timestamp
from mall.common.v1 import common_pb2
from mall.coupons.v1 import coupons_service_pb2 as pb
from mall.coupons.v1 import coupons_service_pb2_grpc

from coupons.adapters import coupons as coupons_sql
from coupons.adapters import rules as rules_sql
from coupons.adapters import stocks as stocks_sql
from coupons.adapters.events import CHANNELS
from coupons.domain.claims import MAX_BATCH, Channel, Claim, Outcome
from coupons.domain.coupons import Coupon
from coupons.domain.redemption import Use
from coupons.entrypoints import translate
from coupons.entrypoints.auth import Caller, current_caller, still_valid, tenant_caller
from coupons.service_layer import offers, redemptions
from coupons.service_layer.claims import Result, claim_batch
from coupons.service_layer.sold_out import SoldOutMemory

MAX_PAGE = 100
#: Redemptions a RedeemCoupons stream may have unanswered; the stream reads no further until
#: one is answered (a till sends one at a time; this bounds a misbehaving one).
STREAM_IN_FLIGHT = 64
Pending = asyncio.Future[tuple[Coupon, int]] | AppError
_streamed = functools.cache(
    functools.partial(GRPC_STREAM_MESSAGES.labels, "/mall.coupons.v1.CouponsService/RedeemCoupons")
)


def _page_size(page: common_pb2.PageRequest) -> int:
    size = page.page_size or 20
    if not 0 < size <= MAX_PAGE:
        raise InvalidInput("invalid_page_size", f"page_size must be 1..{MAX_PAGE}")
    return size


def _cursor(token: str) -> tuple[datetime, str] | None:
    """Page tokens are '<microseconds since epoch>:<id>'."""
    if not token:
        return None
    micros, _, key = token.partition(":")
    if not (micros.isascii() and micros.isdigit()) or not key or len(micros) > 18:
        raise InvalidInput("invalid_page_token", "page_token is not one this API issued")
    return datetime.fromtimestamp(int(micros) / 1e6, UTC), key


def _token(at: datetime, key: str) -> str:
    return f"{int(at.timestamp() * 1_000_000)}:{key}"


def _refusal(result: Result) -> AppError:
    kind = {
        Outcome.NOT_FOUND: NotFound,
        Outcome.INVALID: InvalidInput,
        Outcome.NOT_ELIGIBLE: Forbidden,
    }.get(result.outcome, Conflict)
    return kind(result.reason, result.message or result.reason)


def _caller() -> tuple[str, str] | None:
    caller = current_caller()
    return (caller.mall_id, caller.tenant_id) if caller is not None else None


class CouponsServicer(coupons_service_pb2_grpc.CouponsServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        directory: Directory,
        memory: SoldOutMemory | None = None,
        redeemer: redemptions.Redeemer | None = None,
    ) -> None:
        self._pool = pool
        self._directory = directory
        self._memory = memory or SoldOutMemory()
        self._redeemer = redeemer or redemptions.Redeemer(pool)
        # Every claim waiting when a slot is free goes to the database as one batch: single
        # ClaimCoupon calls, and the claims of concurrent ClaimCoupons calls (each gateway
        # replica's coalescer keeps several in flight), so that a flash grab's hot stock row is
        # locked by one transaction for all of them instead of by one per call, in turn.
        self._claims: Batcher[Claim, Result] = Batcher(
            self._claim_many, session=pool.acquire, max_batch=500, workers=2
        )

    @property
    def claim_batching(self) -> tuple[int, int]:
        """(batches, claims) sent to the database so far (tests, benchmarks)."""
        return self._claims.batches, self._claims.items

    async def _claim_many(self, conn: Connection, claims: Sequence[Claim]) -> list[Result]:
        return await claim_batch(conn, claims, memory=self._memory)

    # -- stocks -------------------------------------------------------------------------------

    async def CreateStock(
        self, request: pb.CreateStockRequest, context: Any
    ) -> pb.CreateStockResponse:
        new = translate.new_stock(request)
        async with self._pool.acquire() as conn:
            stock, _ = await offers.create_stock(conn, new, _caller(), self._directory.store_tenant)
        return pb.CreateStockResponse(stock=translate.stock_message(stock, datetime.now(UTC)))

    async def GetStock(self, request: pb.GetStockRequest, context: Any) -> pb.GetStockResponse:
        async with self._pool.acquire() as conn:
            stock = await stocks_sql.get(conn, request.mall_id, request.stock_id)
        if stock is None:
            raise NotFound("stock_not_found", f"no stock {request.stock_id}")
        return pb.GetStockResponse(stock=translate.stock_message(stock, datetime.now(UTC)))

    async def ListStocks(
        self, request: pb.ListStocksRequest, context: Any
    ) -> pb.ListStocksResponse:
        if not request.mall_id:
            raise InvalidInput("missing_field", "mall_id is required")
        size = _page_size(request.page)
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn:
            stocks = await stocks_sql.page(
                conn,
                request.mall_id,
                tenant_id=request.tenant_id or None,
                status=translate.STOCK_STATUS_NAMES.get(request.status),
                now=now,
                after=_cursor(request.page.page_token),
                limit=size + 1,
            )
        page, more = stocks[:size], len(stocks) > size
        last = page[-1] if more else None
        return pb.ListStocksResponse(
            stocks=[translate.stock_message(s, now) for s in page],
            page=common_pb2.PageResponse(
                next_page_token=_token(last.created_at, last.stock_id)
                if last is not None and last.created_at is not None
                else ""
            ),
        )

    # -- claims -------------------------------------------------------------------------------

    async def ClaimCoupon(
        self, request: pb.ClaimCouponRequest, context: Any
    ) -> pb.ClaimCouponResponse:
        result = await self._claims.submit(translate.claim(request))
        if result.coupon is None:
            raise _refusal(result)
        return pb.ClaimCouponResponse(
            coupon=translate.coupon_message(result.coupon, datetime.now(UTC))
        )

    async def ClaimCoupons(
        self, request: pb.ClaimCouponsRequest, context: Any
    ) -> pb.ClaimCouponsResponse:
        if len(request.claims) > MAX_BATCH:
            raise InvalidInput("batch_too_large", f"at most {MAX_BATCH} claims per call")
        # In the request's order (first come, first served), sharing batches with other calls.
        answers = await asyncio.gather(
            *(self._claims.enqueue(translate.claim(c)) for c in request.claims),
            return_exceptions=True,
        )
        failed = next((a for a in answers if isinstance(a, BaseException)), None)
        if failed is not None:
            raise failed  # the batch failed as a whole (e.g. the database went away)
        results = [a for a in answers if not isinstance(a, BaseException)]
        now = datetime.now(UTC)
        answer = pb.ClaimCouponsResponse()
        for r in results:
            item = answer.results.add(outcome=translate.OUTCOMES[r.outcome], reason=r.reason)
            if r.coupon is not None:
                item.coupon.CopyFrom(translate.coupon_message(r.coupon, now))
        return answer

    async def ClaimCouponByCode(
        self, request: pb.ClaimCouponByCodeRequest, context: Any
    ) -> pb.ClaimCouponByCodeResponse:
        async with self._pool.acquire() as conn:
            code = await rules_sql.get_code(conn, request.mall_id, request.code)
            if code is None:
                raise NotFound("code_not_found", "no such claim code")
            (result,) = await claim_batch(
                conn,
                [
                    Claim(
                        mall_id=request.mall_id,
                        stock_id=code.stock_id,
                        member_id=request.member_id,
                        request_id=request.request_id,
                        tier_code=request.tier_code,
                        tags=tuple(request.tags),
                        channel=Channel(code.channel),
                        guide_id=code.guide_id,
                        claim_code=code.code,
                    )
                ],
                memory=self._memory,
            )
        if result.coupon is None:
            raise _refusal(result)
        return pb.ClaimCouponByCodeResponse(
            coupon=translate.coupon_message(result.coupon, datetime.now(UTC))
        )

    async def ListMemberCoupons(
        self, request: pb.ListMemberCouponsRequest, context: Any
    ) -> pb.ListMemberCouponsResponse:
        if not request.mall_id:
            raise InvalidInput("missing_field", "mall_id is required")
        try:
            uuid.UUID(request.member_id)
        except ValueError:
            raise InvalidInput("invalid_member_id", "member_id must be a UUID") from None
        size = _page_size(request.page)
        async with self._pool.acquire() as conn:
            coupons = await coupons_sql.wallet(
                conn,
                request.mall_id,
                request.member_id,
                status=translate.COUPON_STATUS_NAMES.get(request.status),
                after=_cursor(request.page.page_token),
                limit=size + 1,
            )
        page, more = coupons[:size], len(coupons) > size
        now = datetime.now(UTC)
        return pb.ListMemberCouponsResponse(
            coupons=[translate.coupon_message(c, now) for c in page],
            page=common_pb2.PageResponse(
                next_page_token=_token(page[-1].claimed_at, page[-1].coupon_id) if more else ""
            ),
        )

    async def GetWalletSummary(
        self, request: pb.GetWalletSummaryRequest, context: Any
    ) -> pb.GetWalletSummaryResponse:
        if not request.mall_id:
            raise InvalidInput("missing_field", "mall_id is required")
        try:
            uuid.UUID(request.member_id)
        except ValueError:
            raise InvalidInput("invalid_member_id", "member_id must be a UUID") from None
        async with self._pool.acquire() as conn:
            available, next_expiry = await coupons_sql.wallet_summary(
                conn, request.mall_id, request.member_id, datetime.now(UTC)
            )
        answer = pb.GetWalletSummaryResponse(available=available)
        if next_expiry is not None:
            answer.next_expiry.CopyFrom(timestamp(next_expiry))
        return answer

    # -- redemption ---------------------------------------------------------------------------

    async def RedeemCoupon(
        self, request: pb.RedeemCouponRequest, context: Any
    ) -> pb.RedeemCouponResponse:
        coupon, off = await self._redeemer.redeem(self._use(tenant_caller(), request))
        return pb.RedeemCouponResponse(
            coupon=translate.coupon_message(coupon, datetime.now(UTC)), discount_fen=off
        )

    async def RedeemCoupons(
        self, requests: AsyncIterator[pb.RedeemCouponRequest], context: Any
    ) -> AsyncIterator[pb.RedeemCouponsResponse]:
        """A till's stream: each redemption joins the same batches as RedeemCoupon's (the
        credential was checked when the stream opened; its revocation ends the stream), and the
        answers go back in request order, at most STREAM_IN_FLIGHT unanswered at a time."""
        caller = tenant_caller()
        pending: asyncio.Queue[tuple[str, Pending] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def read() -> None:
            async for request in requests:
                await slots.acquire()
                still_valid(self._directory, caller)
                outcome: Pending
                try:
                    outcome = self._redeemer.enqueue(self._use(caller, request))
                except AppError as refusal:
                    outcome = refusal
                pending.put_nowait((request.use_request_id, outcome))

        reader = asyncio.create_task(read())
        reader.add_done_callback(lambda _: pending.put_nowait(None))
        try:
            while (item := await pending.get()) is not None:
                use_request_id, outcome = item
                answer = pb.RedeemCouponsResponse(use_request_id=use_request_id)
                try:
                    if isinstance(outcome, AppError):
                        raise outcome
                    coupon, off = await outcome
                    answer.redeemed.coupon.CopyFrom(
                        translate.coupon_message(coupon, datetime.now(UTC))
                    )
                    answer.redeemed.discount_fen = off
                    _streamed("OK").inc()
                except AppError as refusal:
                    answer.refused.code = rpc_code(refusal)
                    answer.refused.reason = refusal.code
                    answer.refused.message = refusal.message
                    _streamed(refusal.code).inc()
                yield answer
                slots.release()
            await reader  # the caller's end of the stream, or why reading stopped
        finally:
            reader.cancel()
            # The caller went away with answers unread: nobody will await them (a batch still
            # applies what it took, and a retry on a new stream answers the same).
            while not pending.empty():
                left = pending.get_nowait()
                if left is not None and isinstance(left[1], asyncio.Future):
                    left[1].cancel()

    def _use(self, caller: Caller, request: pb.RedeemCouponRequest) -> Use:
        if request.mall_id != caller.mall_id:
            raise Forbidden("mall_not_yours", f"the credential is not for mall {request.mall_id}")
        store_tenant = self._directory.store_tenant(request.mall_id, request.store_id)
        if store_tenant != caller.tenant_id:
            raise Forbidden("store_not_yours", f"store {request.store_id} is not a store of yours")
        return Use(
            mall_id=request.mall_id,
            coupon_id=request.coupon_id,
            store_id=request.store_id,
            store_tenant_id=store_tenant,
            use_request_id=request.use_request_id,
            order_amount_fen=request.order_amount_fen,
            transaction_id=request.transaction_id,
        )

    # -- rules, codes, figures ----------------------------------------------------------------

    async def PutPostPaymentRule(
        self, request: pb.PutPostPaymentRuleRequest, context: Any
    ) -> pb.PutPostPaymentRuleResponse:
        rule = translate.rule(request.rule, datetime.now(UTC))
        async with self._pool.acquire() as conn:
            stored = await offers.put_rule(conn, rule, _caller())
        return pb.PutPostPaymentRuleResponse(rule=translate.rule_message(stored))

    async def CreateClaimCode(
        self, request: pb.CreateClaimCodeRequest, context: Any
    ) -> pb.CreateClaimCodeResponse:
        code = translate.code(request.claim_code)
        async with self._pool.acquire() as conn:
            created = await offers.create_code(conn, code, _caller())
        return pb.CreateClaimCodeResponse(claim_code=translate.code_message(created))

    async def GetStockStats(
        self, request: pb.GetStockStatsRequest, context: Any
    ) -> pb.GetStockStatsResponse:
        async with self._pool.acquire() as conn:
            figures = await offers.figures(conn, request.mall_id, request.stock_id, _caller())
        answer = pb.GetStockStatsResponse(
            claimed=figures.claimed,
            redeemed=figures.redeemed,
            redemption_rate_bp=figures.redemption_rate_bp,
        )
        for f in figures.by_channel:
            answer.by_channel.add(
                channel=CHANNELS[Channel(f.channel)],
                guide_id=f.guide_id,
                claimed=f.claimed,
                redeemed=f.redeemed,
            )
        return answer
