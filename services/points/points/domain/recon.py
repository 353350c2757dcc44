"""Payment reconciliation: compare what each side of the payment path recorded, list the
differences by transaction id. Pure rules, no I/O.

The sides, in the order a payment passes them: the platform (what WeChat Pay delivered, when
its record is available), the gateway (the PAYMENTS stream), member (the MEMBER stream),
points (ledger credits, refund reversals) and the sync back to the platform
(``wechat_points_sync``, and the platform's own view of it when available).

A payment belongs to the window when the earliest time any side saw it falls inside; the
sides are read a little wider (see ``points.service_layer.recon``) so that a payment seen
just before the window by one side and inside it by the next is judged whole, not missing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime


class Kind(enum.StrEnum):
    MISSING_CAPTURE = "missing_capture"
    UNKNOWN_TO_PLATFORM = "unknown_to_platform"
    MISSING_ATTRIBUTION = "missing_attribution"
    MISSING_CREDIT = "missing_credit"
    DOUBLED_CREDIT = "doubled_credit"
    WRONG_AMOUNT = "wrong_amount"
    NOT_SYNCED = "not_synced"
    MISSING_REVERSAL = "missing_reversal"
    UNEXPECTED_CREDIT = "unexpected_credit"
    WRONG_MEMBER = "wrong_member"
    UNBALANCED_ACCOUNT = "unbalanced_account"


class Stage(enum.StrEnum):
    PLATFORM = "platform"
    GATEWAY = "gateway"
    MEMBER = "member"
    POINTS = "points"
    SYNC = "sync"


SENT = "SENT"


@dataclass(frozen=True, order=True)
class Difference:
    transaction_id: str
    refund_id: str
    kind: Kind
    stage: Stage
    expected: str
    actual: str
    member_id: str = ""


# -- what each side recorded -----------------------------------------------------------------


@dataclass(frozen=True)
class Payment:
    """A payment as the platform, the gateway or member recorded it."""

    transaction_id: str
    amount_fen: int
    at: datetime
    member_id: str = ""  # member's attribution only
    #: Paid with WeChat Pay (so its points are owed back to the platform).
    wechat: bool = True
    appid: str = ""


@dataclass(frozen=True)
class Refund:
    """A refund as the platform, the gateway or member recorded it."""

    refund_id: str
    transaction_id: str
    amount_fen: int
    at: datetime
    wechat: bool = True


@dataclass(frozen=True)
class PlatformSync:
    """The platform's own view of a payment's points sync."""

    synced: bool
    points: int | None = None


@dataclass(frozen=True)
class Credit:
    transaction_id: str
    member_id: str
    points: int
    at: datetime


@dataclass(frozen=True)
class Reversal:
    refund_id: str
    transaction_id: str
    refund_amount_fen: int
    points: int
    at: datetime


@dataclass(frozen=True)
class Sync:
    """A row of wechat_points_sync: one report owed to the platform."""

    state: str
    increased_points: int


@dataclass
class Evidence:
    """Everything the sides recorded around one mall's window (read wider than the window)."""

    #: None: the platform's record was not consulted (not configured).
    platform_payments: dict[str, Payment] | None = None
    platform_refunds: dict[str, Refund] | None = None
    platform_syncs: dict[str, PlatformSync] = field(default_factory=dict)
    captured: dict[str, Payment] = field(default_factory=dict)
    captured_refunds: dict[str, Refund] = field(default_factory=dict)
    attributed: dict[str, Payment] = field(default_factory=dict)
    attributed_refunds: dict[str, Refund] = field(default_factory=dict)
    credits: dict[str, list[Credit]] = field(default_factory=dict)
    reversals: dict[str, Reversal] = field(default_factory=dict)
    #: (transaction_id, 'credit' | 'reversal') → the report's row.
    syncs: dict[tuple[str, str], Sync] = field(default_factory=dict)
    unbalanced_members: list[str] = field(default_factory=list)


def _first_seen(key: str, *sides: dict[str, Payment] | dict[str, Refund] | None) -> datetime:
    return min(side[key].at for side in sides if side is not None and key in side)


def _in(moment: datetime, start: datetime, end: datetime) -> bool:
    return start <= moment < end


def payments_in_window(e: Evidence, start: datetime, end: datetime) -> list[str]:
    sides = (e.platform_payments, e.captured, e.attributed)
    keys = set().union(*(s for s in sides if s is not None))
    return sorted(k for k in keys if _in(_first_seen(k, *sides), start, end))


def refunds_in_window(e: Evidence, start: datetime, end: datetime) -> list[str]:
    sides = (e.platform_refunds, e.captured_refunds, e.attributed_refunds)
    keys = set().union(*(s for s in sides if s is not None))
    return sorted(k for k in keys if _in(_first_seen(k, *sides), start, end))


def _fen(amount: int) -> str:
    return f"{amount} fen"


def _points(points: int) -> str:
    return f"{points} points"


def _credits(n: int) -> str:
    return f"{n} credit" + ("" if n == 1 else "s")


def compare(e: Evidence, start: datetime, end: datetime) -> list[Difference]:
    """Every difference of the window, sorted by transaction id."""
    found: list[Difference] = []
    payments = payments_in_window(e, start, end)
    for tx in payments:
        found.extend(_payment(e, tx))
    known = set(e.captured) | set(e.attributed) | set(e.platform_payments or ())
    for tx, credits in e.credits.items():
        if tx not in known and any(_in(c.at, start, end) for c in credits):
            found.append(
                Difference(
                    tx,
                    "",
                    Kind.UNEXPECTED_CREDIT,
                    Stage.POINTS,
                    "no payment",
                    _credits(len(credits)),
                    credits[0].member_id,
                )
            )
    for refund_id in refunds_in_window(e, start, end):
        found.extend(_refund(e, refund_id))
    found.extend(
        Difference("", "", Kind.UNBALANCED_ACCOUNT, Stage.POINTS, "balance = sum(ledger)", "", m)
        for m in e.unbalanced_members
    )
    return sorted(found)


def _payment(e: Evidence, tx: str) -> Iterable[Difference]:
    platform = e.platform_payments.get(tx) if e.platform_payments is not None else None
    captured, attributed = e.captured.get(tx), e.attributed.get(tx)

    def diff(kind: Kind, stage: Stage, expected: str, actual: str, member: str = "") -> Difference:
        return Difference(tx, "", kind, stage, expected, actual, member)

    if e.platform_payments is not None:
        if platform is not None and captured is None:
            yield diff(Kind.MISSING_CAPTURE, Stage.GATEWAY, "captured", "none")
            return  # nothing downstream can have happened
        if platform is None and captured is not None:
            yield diff(Kind.UNKNOWN_TO_PLATFORM, Stage.PLATFORM, "paid", "none")
        if (
            platform is not None
            and captured is not None
            and platform.amount_fen != captured.amount_fen
        ):
            yield diff(
                Kind.WRONG_AMOUNT,
                Stage.GATEWAY,
                _fen(platform.amount_fen),
                _fen(captured.amount_fen),
            )
    if attributed is None:
        if captured is not None:
            yield diff(Kind.MISSING_ATTRIBUTION, Stage.MEMBER, "attributed", "none")
        return
    member = attributed.member_id
    if captured is not None and captured.amount_fen != attributed.amount_fen:
        yield diff(
            Kind.WRONG_AMOUNT,
            Stage.MEMBER,
            _fen(captured.amount_fen),
            _fen(attributed.amount_fen),
            member,
        )
    credits = e.credits.get(tx, [])
    if not credits:
        yield diff(Kind.MISSING_CREDIT, Stage.POINTS, _credits(1), _credits(0), member)
        return
    if len(credits) > 1:
        yield diff(Kind.DOUBLED_CREDIT, Stage.POINTS, _credits(1), _credits(len(credits)), member)
    credit = credits[0]
    if credit.member_id != member:
        yield diff(Kind.WRONG_MEMBER, Stage.POINTS, member, credit.member_id, member)
    if not attributed.wechat:
        return  # a POS payment: not the platform's business
    sync = e.syncs.get((tx, "credit"))
    if sync is None or sync.state != SENT:
        yield diff(Kind.NOT_SYNCED, Stage.SYNC, SENT, sync.state if sync else "none", member)
    if sync is not None and sync.increased_points != credit.points:
        yield diff(
            Kind.WRONG_AMOUNT,
            Stage.SYNC,
            _points(credit.points),
            _points(sync.increased_points),
            member,
        )
    if e.platform_payments is not None and sync is not None and sync.state == SENT:
        seen = e.platform_syncs.get(tx)
        if seen is None or not seen.synced:
            yield diff(Kind.NOT_SYNCED, Stage.PLATFORM, "synced", "none", member)
        elif seen.points is not None and seen.points != sync.increased_points:
            yield diff(
                Kind.WRONG_AMOUNT,
                Stage.PLATFORM,
                _points(sync.increased_points),
                _points(seen.points),
                member,
            )


def _refund(e: Evidence, refund_id: str) -> Iterable[Difference]:
    platform = e.platform_refunds.get(refund_id) if e.platform_refunds is not None else None
    captured = e.captured_refunds.get(refund_id)
    attributed = e.attributed_refunds.get(refund_id)
    tx = next(r.transaction_id for r in (platform, captured, attributed) if r is not None)
    paid = e.attributed.get(tx)
    member = paid.member_id if paid is not None else ""

    def diff(kind: Kind, stage: Stage, expected: str, actual: str) -> Difference:
        return Difference(tx, refund_id, kind, stage, expected, actual, member)

    if e.platform_refunds is not None:
        if platform is not None and captured is None:
            yield diff(Kind.MISSING_CAPTURE, Stage.GATEWAY, "captured", "none")
            return
        if platform is None and captured is not None:
            yield diff(Kind.UNKNOWN_TO_PLATFORM, Stage.PLATFORM, "refunded", "none")
        if (
            platform is not None
            and captured is not None
            and platform.amount_fen != captured.amount_fen
        ):
            yield diff(
                Kind.WRONG_AMOUNT,
                Stage.GATEWAY,
                _fen(platform.amount_fen),
                _fen(captured.amount_fen),
            )
    if attributed is None:
        if captured is not None:
            yield diff(Kind.MISSING_ATTRIBUTION, Stage.MEMBER, "attributed", "none")
        return
    if captured is not None and captured.amount_fen != attributed.amount_fen:
        yield diff(
            Kind.WRONG_AMOUNT, Stage.MEMBER, _fen(captured.amount_fen), _fen(attributed.amount_fen)
        )
    reversal = e.reversals.get(refund_id)
    if reversal is None:
        yield diff(Kind.MISSING_REVERSAL, Stage.POINTS, "reversed", "none")
        return
    if reversal.refund_amount_fen != attributed.amount_fen:
        yield diff(
            Kind.WRONG_AMOUNT,
            Stage.POINTS,
            _fen(attributed.amount_fen),
            _fen(reversal.refund_amount_fen),
        )
    if not attributed.wechat:
        return
    sync = e.syncs.get((tx, "reversal"))
    if sync is None or sync.state != SENT:
        yield diff(Kind.NOT_SYNCED, Stage.SYNC, SENT, sync.state if sync else "none")
