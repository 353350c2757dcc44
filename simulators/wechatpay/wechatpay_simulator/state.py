"""Everything the simulated platform remembers, in memory: payments it notified, refunds,
authorisations, the points syncs it received, every notification delivery and its attempts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from wechatpay_simulator.config import Merchant

#: The platform writes times in China Standard Time.
CST = timezone(timedelta(hours=8), "CST")


def now() -> datetime:
    return datetime.now(CST)


def rfc3339(moment: datetime) -> str:
    """``2026-11-26T10:00:00+08:00``: how the platform writes a time."""
    return moment.astimezone(CST).isoformat(timespec="seconds")


class EventType(StrEnum):
    PAYMENT = "MALL_TRANSACTION.SUCCESS"
    REFUND = "MALL_REFUND.SUCCESS"
    AUTHORIZATION = "MALL_AUTH.ACTIVATE_CARD"


class DeliveryStatus(StrEnum):
    """For a signature probe the meaning flips: DELIVERED once the mall refused it (as it
    must), FAILED when it answered 200/204 to a signature that cannot verify."""

    PENDING = "PENDING"  # not yet acknowledged, more attempts to come
    DELIVERED = "DELIVERED"  # the mall answered 200 or 204
    FAILED = "FAILED"  # the retry schedule ran out


class AuthorizeState(StrEnum):
    UNAUTHORIZED = "UNAUTHORIZED"
    AUTHORIZED = "AUTHORIZED"
    DEAUTHORIZED = "DEAUTHORIZED"


@dataclass
class Payment:
    transaction_id: str
    mchid: str
    sub_mchid: str | None
    appid: str
    openid: str
    amount: int
    time_end: datetime
    resource: dict[str, Any]
    notification_id: str
    refunded: int = 0


@dataclass
class Refund:
    refund_id: str
    transaction_id: str
    refund_amount: int
    notification_id: str


@dataclass
class Authorization:
    mchid: str
    appid: str
    openid: str
    code: str | None
    auth_type: str
    state: AuthorizeState
    authorize_time: datetime
    deauthorize_time: datetime | None = None

    def answer(self) -> dict[str, Any]:
        """The body of the authorisation query."""
        body: dict[str, Any] = {
            "openid": self.openid,
            "appid": self.appid,
            "authorize_state": self.state.value,
            "authorize_time": rfc3339(self.authorize_time),
        }
        if self.deauthorize_time is not None:
            body["deauthorize_time"] = rfc3339(self.deauthorize_time)
        return body


@dataclass
class PointsSync:
    """One authenticated call of the points sync API, whatever it was answered."""

    received_at: datetime
    mchid: str
    status: int
    code: str | None
    body: Any
    verified: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "received_at": rfc3339(self.received_at),
            "mchid": self.mchid,
            "verified": self.verified,
            "status": self.status,
            "code": self.code,
            "body": self.body,
        }


@dataclass
class Attempt:
    at: datetime
    status: int | None  # the mall's HTTP status; None when there was no answer
    answer: str  # its body (shortened), or what went wrong
    duration_ms: float


@dataclass
class Delivery:
    """One notification and what became of it."""

    id: str
    event_type: str
    mchid: str
    notify_url: str
    body: str  # the envelope, exactly as sent (retries resend the same body, re-signed)
    resource: dict[str, Any]  # the plaintext of resource.ciphertext
    created_at: datetime
    probe: bool = False  # a signature probe (WECHATPAY/SIGNTEST/): one attempt, must be refused
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: list[Attempt] = field(default_factory=list)
    next_attempt_at: datetime | None = None

    def summary(self) -> dict[str, Any]:
        last = self.attempts[-1] if self.attempts else None
        return {
            "id": self.id,
            "event_type": self.event_type,
            "mchid": self.mchid,
            "notify_url": self.notify_url,
            "probe": self.probe,
            "status": self.status.value,
            "attempts": len(self.attempts),
            "created_at": rfc3339(self.created_at),
            "next_attempt_at": rfc3339(self.next_attempt_at) if self.next_attempt_at else None,
            "last_answer": _attempt_json(last) if last else None,
            "transaction_id": self.resource.get("transaction_id"),
        }

    def detail(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "attempt_log": [_attempt_json(a) for a in self.attempts],
            "resource": self.resource,
            "body": self.body,
        }


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    data = asdict(attempt)
    data["at"] = rfc3339(attempt.at)
    return data


@dataclass
class Fault:
    """The next ``remaining`` calls of an operation fail with ``status``."""

    remaining: int
    status: int


@dataclass(frozen=True)
class LoginCode:
    """A ``wx.login`` code: who logged in to which mini-program, until when (single use)."""

    appid: str
    openid: str
    unionid: str | None
    expires_at: float  # time.monotonic()


@dataclass
class PlatformState:
    merchants: dict[str, Merchant]
    payments: dict[str, Payment] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    authorizations: dict[tuple[str, str, str], Authorization] = field(default_factory=dict)
    points_syncs: list[PointsSync] = field(default_factory=list)
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    login_codes: dict[str, LoginCode] = field(default_factory=dict)
    used_login_codes: set[str] = field(default_factory=set)
    _synced: set[str] = field(default_factory=set)
    _by_shopper: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)

    def add_payment(self, payment: Payment) -> None:
        self.payments[payment.transaction_id] = payment
        shopper = (payment.mchid, payment.appid, payment.openid)
        self._by_shopper.setdefault(shopper, []).append(payment.transaction_id)

    def add_points_sync(self, sync: PointsSync) -> None:
        self.points_syncs.append(sync)
        if sync.status == 204:
            self._synced.add(sync.body["transaction_id"])

    def points_synced(self, transaction_id: str) -> bool:
        """Whether the mall has reported points (accepted, 204) for this payment."""
        return transaction_id in self._synced

    def pending_points(self, mchid: str, appid: str, openid: str) -> bool:
        """Whether a payment of this shopper still waits for its points sync."""
        paid = self._by_shopper.get((mchid, appid, openid), [])
        return any(t not in self._synced for t in paid)

    def take_fault(self, operation: str) -> Fault | None:
        fault = self.faults.get(operation)
        if fault is None or fault.remaining <= 0:
            return None
        fault.remaining -= 1
        return fault
