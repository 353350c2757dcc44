"""Load mode: the platform as a payment storm, for ``bench/storm.py``.

A *step* is ``rate`` payment notifications per second for ``duration_s`` seconds, sent open
loop: each notification leaves at its planned moment whether or not the mall has answered the
earlier ones, so a slow mall shows as unacknowledged notifications and lag, never as a lower
offered rate. Beside the payments go a mix the mall must handle: ``refund_share`` refunds (a
while after their payment), ``redelivery_share`` re-deliveries of a payment notification
already sent (the same envelope, signed again), ``early_refund_share`` refunds sent *before*
their payment. Malls, their shops and shoppers come from the step's request.

Signing costs ≈ 470 µs per notification (RSA-2048), a core per ~2,100/s: the simulator would
be a large load on a 2-core machine if it signed while sending. So every notification of a
step is encrypted and signed when the step is *prepared* (``POST /control/load/steps``,
which answers once done), and ``POST /control/load/steps/{id}/start`` only sends. Retries
(the mall did not answer 200/204) follow the platform's schedule (scaled); unlike the
platform, which signs every attempt afresh, a retry reuses the step's signature while its
timestamp is under 4 minutes old (``RESIGN_AFTER_S``), so that a slow mall does not turn the
load generator into a signing load on the same cores.

Payments are recorded in the platform state when prepared (their ``time_end`` is the planned
moment), refunds when sent: ``/control/bill`` and the points-sync checks know them as they
know payments made through ``/control/payments``.

    POST /control/load/steps {rate, duration_s, malls: [{appid, shops: [...], mchid?}],
        shoppers_per_mall?, refund_share?, redelivery_share?, early_refund_share?, seed?}
        → 201 {step_id, planned: {payment, refund, early_refund, redelivery}, prepare_s}
    POST /control/load/steps/{id}/start → 202 {step_id, started_at}
    GET  /control/load/steps/{id}[?detail=progress|payments] → the step's report (counts
        only; or with every payment's due, sent, acknowledged and points-synced times)
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from wechatpay_simulator.config import Merchant, Settings
from wechatpay_simulator.delivery import ACKNOWLEDGED
from wechatpay_simulator.fields import ApiError, Fields, json_object, param_error
from wechatpay_simulator.keys import SETTINGS, STATE
from wechatpay_simulator.notifications import envelope, platform_headers
from wechatpay_simulator.state import (
    CST,
    Delivery,
    DeliveryStatus,
    EventType,
    Payment,
    PlatformState,
    Refund,
    rfc3339,
)

PAYMENT, REFUND, EARLY_REFUND, REDELIVERY = "payment", "refund", "early_refund", "redelivery"
#: How long after its payment a refund or a re-delivery is sent (seconds, uniform).
FOLLOW_UP_S = (0.5, 3.0)
#: How long before its payment an early refund is sent.
EARLY_S = (0.2, 1.0)
#: A retry goes with the step's own signature while it is this fresh (the mall accepts a
#: timestamp within 5 minutes), signed afresh after: signing every retry made the simulator
#: spend a third of its core on signatures once the mall slowed down.
RESIGN_AFTER_S = 240
#: Connections to the mall at once; beyond, sends queue here (and count as lag).
MAX_CONNECTIONS = 512


@dataclass(frozen=True)
class LoadMall:
    mchid: str
    appid: str
    shops: tuple[str, ...]


@dataclass
class Planned:
    """One notification of a step: when it is due, what it is, and what became of it."""

    kind: str
    due_s: float  # after the step's start
    transaction_id: str
    event_type: EventType
    merchant: Merchant
    body: str
    headers: dict[str, str]
    resource: dict[str, Any]
    notification_id: str
    sent_at: float | None = None  # unix time the first attempt left
    acked_at: float | None = None  # unix time the mall answered 200/204
    attempts: int = 0
    gave_up: bool = False


@dataclass
class Step:
    id: str
    rate: float
    duration_s: float
    planned: list[Planned]
    prepare_s: float
    #: The step's payments, recorded in the platform state once prepared (see create_step).
    payments: list[Payment] = field(default_factory=list)
    started_at: float | None = None  # unix time
    finished_sending_at: float | None = None
    #: Kept as they happen, so a progress report costs nothing however large the step.
    sent: int = 0
    acked: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def status(self) -> str:
        if self.started_at is None:
            return "PREPARED"
        return "SENDING" if self.finished_sending_at is None else "SENT"


def _malls(state: PlatformState, body: dict[str, Any]) -> list[LoadMall]:
    raw = body.get("malls")
    if not isinstance(raw, list) or not raw:
        raise param_error("malls must be a non-empty list of {appid, shops, mchid?}")
    malls = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise param_error("each mall must be an object")
        m = Fields(entry)
        mchid = m.optional_string("mchid", max_len=32) or next(iter(state.merchants), "")
        if mchid not in state.merchants:
            raise param_error(f"mchid {mchid} is not a merchant of this simulator")
        if not state.merchants[mchid].notify_url:
            raise param_error(f"merchant {mchid} has no notify_url")
        shops = entry.get("shops")
        if not isinstance(shops, list) or not shops or not all(isinstance(s, str) for s in shops):
            raise param_error("shops must be a non-empty list of shop numbers")
        malls.append(LoadMall(mchid, m.string("appid"), tuple(shops)))
    return malls


def _share(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise param_error(f"{name} must be a number from 0 to 1")
    return float(value)


def _sealed(
    settings: Settings, merchant: Merchant, event_type: EventType, resource: dict[str, Any]
) -> tuple[str, str, dict[str, str]]:
    notification_id, body = envelope(merchant, event_type, resource, created_at=datetime.now(CST))
    return notification_id, body, platform_headers(settings, body)


def plan(state: PlatformState, settings: Settings, body: dict[str, Any]) -> Step:
    """Every notification of a step, encrypted and signed, in the order they are due."""
    f = Fields(body)
    rate = body.get("rate")
    duration_s = body.get("duration_s")
    if not isinstance(rate, int | float) or not 0 < rate <= 100_000:
        raise param_error("rate must be a positive number (payments per second)")
    if not isinstance(duration_s, int | float) or not 0 < duration_s <= 3600:
        raise param_error("duration_s must be a positive number of seconds")
    malls = _malls(state, body)
    shoppers = f.optional_integer("shoppers_per_mall", minimum=1) or 500
    refund_share = _share(body, "refund_share", 0.05)
    redelivery_share = _share(body, "redelivery_share", 0.02)
    early_share = _share(body, "early_refund_share", 0.01)
    rng = random.Random(f.optional_integer("seed", minimum=0))
    step_id = uuid.uuid4().hex[:12]
    prepared = time.perf_counter()
    base = datetime.now(CST)
    planned: list[Planned] = []
    payments: list[Payment] = []
    for i in range(round(rate * duration_s)):
        due = i / rate
        mall = rng.choice(malls)
        merchant = state.merchants[mall.mchid]
        shop = rng.choice(mall.shops)
        tx = f"4200{base:%Y%m%d}{rng.getrandbits(53):016d}"
        time_end = base + timedelta(seconds=due)
        openid = f"o-load-{mall.appid}-{rng.randrange(shoppers)}"
        amount = rng.randint(100, 200_000)
        resource: dict[str, Any] = {
            "mchid": mall.mchid,
            "merchant_name": shop,
            "shop_name": shop,
            "shop_number": shop,
            "appid": mall.appid,
            "openid": openid,
            "time_end": rfc3339(time_end),
            "amount": amount,
            "transaction_id": tx,
        }
        nid, text, headers = _sealed(settings, merchant, EventType.PAYMENT, resource)
        payment = Planned(
            PAYMENT, due, tx, EventType.PAYMENT, merchant, text, headers, resource, nid
        )
        planned.append(payment)
        payments.append(
            Payment(
                tx,
                mall.mchid,
                None,
                mall.appid,
                openid,
                amount,
                time_end,
                resource,
                nid,
            )
        )
        draw = rng.random()
        if draw < refund_share + early_share:
            early = draw < early_share
            at = max(0.0, due - rng.uniform(*EARLY_S)) if early else due + rng.uniform(*FOLLOW_UP_S)
            at = min(at, duration_s)
            refund = {
                **{k: resource[k] for k in ("mchid", "merchant_name", "shop_name", "shop_number")},
                "appid": mall.appid,
                "openid": resource["openid"],
                "refund_time": rfc3339(base + timedelta(seconds=at)),
                "pay_amount": resource["amount"],
                "refund_amount": rng.randint(1, amount),
                "transaction_id": tx,
                "refund_id": f"5030{base:%Y%m%d}{rng.getrandbits(56):017d}",
            }
            nid, text, headers = _sealed(settings, merchant, EventType.REFUND, refund)
            kind = EARLY_REFUND if early else REFUND
            planned.append(
                Planned(kind, at, tx, EventType.REFUND, merchant, text, headers, refund, nid)
            )
        if rng.random() < redelivery_share:
            at = min(due + rng.uniform(*FOLLOW_UP_S), duration_s)
            again = platform_headers(settings, payment.body)
            planned.append(
                Planned(
                    REDELIVERY,
                    at,
                    tx,
                    EventType.PAYMENT,
                    merchant,
                    payment.body,
                    again,
                    resource,
                    payment.notification_id,
                )
            )
    planned.sort(key=lambda p: p.due_s)
    took = time.perf_counter() - prepared
    return Step(step_id, float(rate), float(duration_s), planned, took, payments)


def _record_refund(state: PlatformState, p: Planned) -> None:
    refund_id = p.resource["refund_id"]
    if refund_id in state.refunds:
        return
    paid = state.payments[p.transaction_id]
    paid.refunded += p.resource["refund_amount"]
    state.refunds[refund_id] = Refund(
        refund_id, p.transaction_id, p.resource["refund_amount"], p.notification_id
    )
    state.deliveries[p.notification_id] = Delivery(
        p.notification_id,
        p.event_type.value,
        p.merchant.mchid,
        p.merchant.notify_url or "",
        "",
        p.resource,
        datetime.now(CST),
        status=DeliveryStatus.PENDING,
    )


class LoadRunner:
    """The steps of this simulator and the HTTP client that sends them."""

    def __init__(self, settings: Settings, state: PlatformState) -> None:
        self.settings = settings
        self.state = state
        self.steps: dict[str, Step] = {}
        self._session: aiohttp.ClientSession | None = None
        self._runs: set[asyncio.Task[None]] = set()

    def start(self, step: Step) -> None:
        if step.started_at is not None:
            raise ApiError(409, "STEP_STARTED", f"step {step.id} was already started")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
            self._session = aiohttp.ClientSession(connector=connector)
        step.started_at = time.time()
        run = asyncio.ensure_future(self._run(step, self._session, time.monotonic()))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    async def _run(self, step: Step, session: aiohttp.ClientSession, begun: float) -> None:
        for p in step.planned:
            delay = begun + p.due_s - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self._deliver(session, step, p))
            step.tasks.add(task)
            task.add_done_callback(step.tasks.discard)
        step.finished_sending_at = time.time()

    async def _deliver(self, session: aiohttp.ClientSession, step: Step, p: Planned) -> None:
        if p.kind in (REFUND, EARLY_REFUND):
            _record_refund(self.state, p)
        p.sent_at = time.time()
        step.sent += 1
        headers = p.headers
        gaps = [g * self.settings.retry_scale for g in self.settings.retry_schedule_s]
        timeout = aiohttp.ClientTimeout(total=self.settings.delivery_timeout_s)
        url = p.merchant.notify_url or ""
        while True:
            p.attempts += 1
            status = None
            try:
                async with session.post(
                    url,
                    data=p.body.encode(),
                    headers={"Content-Type": "application/json", **headers},
                    timeout=timeout,
                ) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                pass
            if status in ACKNOWLEDGED:
                p.acked_at = time.time()
                step.acked += 1
                if p.kind in (REFUND, EARLY_REFUND):
                    self.state.deliveries[p.notification_id].status = DeliveryStatus.DELIVERED
                return
            if not gaps:
                p.gave_up = True
                return
            await asyncio.sleep(gaps.pop(0))
            if time.time() - int(headers["Wechatpay-Timestamp"]) > RESIGN_AFTER_S:
                headers = platform_headers(self.settings, p.body)

    async def close(self) -> None:
        pending = [*self._runs, *(t for s in self.steps.values() for t in s.tasks)]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def synced_at(state: PlatformState) -> dict[str, float]:
    """Unix time of each payment's first accepted points sync (its credit reported)."""
    first: dict[str, float] = {}
    for sync in state.points_syncs:
        if sync.status == 204 and isinstance(sync.body, dict):
            first.setdefault(str(sync.body.get("transaction_id")), sync.received_at.timestamp())
    return first


def progress(step: Step) -> dict[str, Any]:
    """Counts only (cheap: polled while a step runs)."""
    return {
        "step_id": step.id,
        "status": step.status,
        "sent": step.sent,
        "acked": step.acked,
        "unsent": len(step.planned) - step.sent,
        "unacked": step.sent - step.acked,  # sent, not (yet) acknowledged
    }


def report(step: Step, state: PlatformState, *, detail: bool = False) -> dict[str, Any]:
    """What was planned, sent and acknowledged; ack latency from the moment each was due."""
    start = step.started_at
    kinds = Counter(p.kind for p in step.planned)
    sent = [p for p in step.planned if p.sent_at is not None]
    acked = [p for p in sent if p.acked_at is not None]
    out: dict[str, Any] = {
        "step_id": step.id,
        "status": step.status,
        "rate": step.rate,
        "duration_s": step.duration_s,
        "prepare_s": round(step.prepare_s, 3),
        "started_at": start,
        "finished_sending_at": step.finished_sending_at,
        "planned": dict(kinds),
        "sent": len(sent),
        "acked": len(acked),
        "unsent": len(step.planned) - len(sent),
        "unacked": len(sent) - len(acked),  # sent, not (yet) acknowledged
        "gave_up": sum(p.gave_up for p in step.planned),
        "retried": sum(p.attempts > 1 for p in step.planned),
    }
    if start is not None:
        end = start + step.duration_s
        due = [start + p.due_s for p in sent]
        out["acked_by_end"] = sum(p.acked_at is not None and p.acked_at <= end for p in sent)
        out["send_lag_max_ms"] = max(
            ((p.sent_at or 0) - d) * 1000 for p, d in zip(sent, due, strict=True)
        ) if sent else None  # fmt: skip
        latency = [((p.acked_at or 0) - start - p.due_s) * 1000 for p in acked]
        out["ack_p50_ms"] = _percentile(latency, 50)
        out["ack_p99_ms"] = _percentile(latency, 99)
    if detail and start is not None:
        synced = synced_at(state)
        out["payments"] = [
            [p.transaction_id, start + p.due_s, p.sent_at, p.acked_at, synced.get(p.transaction_id)]
            for p in step.planned
            if p.kind == PAYMENT
        ]
    return out


# -- routes ------------------------------------------------------------------------------

RUNNER = web.AppKey("load_runner", LoadRunner)


def _step(request: web.Request) -> Step:
    step = request.app[RUNNER].steps.get(request.match_info["id"])
    if step is None:
        raise ApiError(404, "RESOURCE_NOT_EXISTS", "no such load step")
    return step


async def create_step(request: web.Request) -> web.Response:
    app = request.app
    body = await json_object(request)
    # Signing thousands of notifications takes seconds: off the event loop (the state is
    # only read there; the payments are recorded here, on the loop).
    step = await asyncio.to_thread(plan, app[STATE], app[SETTINGS], body)
    for payment in step.payments:
        app[STATE].add_payment(payment)
    step.payments = []
    app[RUNNER].steps[step.id] = step
    answer = report(step, app[STATE])
    return web.json_response(
        {"step_id": step.id, "planned": answer["planned"], "prepare_s": answer["prepare_s"]},
        status=201,
    )


async def start_step(request: web.Request) -> web.Response:
    step = _step(request)
    request.app[RUNNER].start(step)
    return web.json_response({"step_id": step.id, "started_at": step.started_at}, status=202)


async def get_step(request: web.Request) -> web.Response:
    """``?detail=progress``: counts only; ``?detail=payments``: every payment's times too."""
    detail = request.query.get("detail")
    if detail == "progress":
        return web.json_response(progress(_step(request)))
    answer = report(_step(request), request.app[STATE], detail=detail == "payments")
    return web.json_response(answer)


async def _runner(app: web.Application) -> Any:
    runner = LoadRunner(app[SETTINGS], app[STATE])
    app[RUNNER] = runner
    yield
    await runner.close()


def setup_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(_runner)
    app.router.add_post("/control/load/steps", create_step)
    app.router.add_post("/control/load/steps/{id}/start", start_step)
    app.router.add_get("/control/load/steps/{id}", get_step)
