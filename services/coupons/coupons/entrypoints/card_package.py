"""Entrypoints of the WeChat card package mirror: the coupons core's own events (claimed,
redeemed, revoked, returned) record what the platform should show; WeChat Pay payments tell
who a member is at WeChat; the worker (relay role); ``card-package-enable`` and
``card-package-status``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

import asyncpg
import structlog
from eventbus.consumer import Delivery
from kit.cli import Command
from kit.db import Connection
from kit.errors import AppError
from kit.lifecycle import Component
from kit.proto import to_datetime
from mall.common.v1 import common_pb2
from mall.coupons.v1 import events_pb2
from mall.member.v1 import events_pb2 as member_events

from coupons.adapters import card_package as sql
from coupons.adapters import card_package_stocks as stocks_sql
from coupons.adapters.card_package_platform import WeChatMerchantCoupons
from coupons.commitment_settings import CommitmentSettings
from coupons.domain.card_package import Wanted
from coupons.service_layer.card_package import (
    CardPackageWorker,
    CouponWish,
    MirrorPolicy,
    flag_stock,
    record_wishes,
)

log = structlog.get_logger(__name__)

COUPON_EVENTS = "coupons.coupon.>"
PAYMENT_ATTRIBUTED = "member.payment.attributed"

Connect = Callable[[], AbstractAsyncContextManager[Connection]]


async def on_coupon_events(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """``coupons-card-package``: in stream order, what each coupon should be at the platform
    (claimed: sent; redeemed: used; revoked: deactivated; returned: available again), a batch
    at a time (``record_wishes``); a ``returned`` applies between what came before and after."""
    wishes: list[CouponWish] = []
    for d in deliveries:
        kind = d.subject.rsplit(".", 1)[-1]
        if kind == "claimed":
            c = d.decode(events_pb2.CouponClaimed)
            wishes.append(CouponWish(c.mall_id, c.coupon_id, c.stock_id, c.member_id, Wanted.SENT))
        elif kind == "redeemed":
            r = d.decode(events_pb2.CouponRedeemed)
            used_at = to_datetime(r.occurred_at)
            wishes.append(
                CouponWish(r.mall_id, r.coupon_id, r.stock_id, r.member_id, Wanted.USED, used_at)
            )
        elif kind == "revoked":
            v = d.decode(events_pb2.CouponRevoked)
            wishes.append(
                CouponWish(v.mall_id, v.coupon_id, v.stock_id, v.member_id, Wanted.DEACTIVATED)
            )
        elif kind == "returned":
            back = d.decode(events_pb2.CouponReturned)
            await record_wishes(conn, wishes)
            wishes = []
            await sql.want_returned(conn, back.mall_id, back.coupon_id)
        # expiring, expired: the platform expires its coupons itself
    await record_wishes(conn, wishes)


async def on_payment_attributed(conn: Connection, deliveries: Sequence[Delivery]) -> None:
    """``coupons-card-package-payers``: a WeChat Pay payment says who the member is there."""
    payers = []
    for d in deliveries:
        p = d.decode(member_events.PaymentAttributed)
        if p.source == common_pb2.PAYMENT_SOURCE_WECHAT_PAY and p.appid and p.openid:
            payers.append((p.mall_id, p.member_id, p.appid, p.openid))
    await stocks_sql.put_payers(conn, payers)


def card_package_job(settings: CommitmentSettings, pool: asyncpg.Pool) -> Component:
    client = settings.wechatpay_client()  # a bad key file stops the process at start
    if client is None:

        async def disabled(stop: asyncio.Event) -> None:
            log.warning(
                "card_package_disabled",
                reason="WECHATPAY_API_BASE is not set: card package coupons queue up",
            )

        return disabled
    timeout = settings.wechatpay_timeout_s + 5
    policy = MirrorPolicy(lease_s=max(60.0, 2 * timeout), send_timeout_s=timeout)

    async def run(stop: asyncio.Event) -> None:
        async with client:
            worker = CardPackageWorker(pool, WeChatMerchantCoupons(client), policy=policy)
            await worker.run(stop)

    return run


def card_package_commands(connect: Connect, mchid: str) -> dict[str, Command]:
    async def enable(args: Sequence[str]) -> int:
        """``card-package-enable MALL_ID STOCK_ID``: mirror the stock's coupons from now on."""
        if len(args) != 2:
            sys.stderr.write("usage: card-package-enable MALL_ID STOCK_ID\n")
            return 2
        if not mchid:
            sys.stderr.write("WECHATPAY_MCHID is not set: the platform stock needs its owner\n")
            return 1
        try:
            async with connect() as conn:
                flagged = await flag_stock(conn, args[0], args[1], mchid)
        except AppError as exc:
            sys.stderr.write(f"{exc.code}: {exc.message}\n")
            return 1
        sys.stdout.write(json.dumps({"flagged": flagged}) + "\n")
        return 0

    async def status(args: Sequence[str]) -> int:
        """``card-package-status MALL_ID``: flagged stocks, coupons by state, problems."""
        if len(args) != 1:
            sys.stderr.write("usage: card-package-status MALL_ID\n")
            return 2
        async with connect() as conn:
            found = await sql.status(conn, args[0])
        sys.stdout.write(json.dumps(found, ensure_ascii=False, default=str) + "\n")
        return 0

    return {"card-package-enable": enable, "card-package-status": status}
