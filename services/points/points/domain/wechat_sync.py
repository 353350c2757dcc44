"""What points reports to WeChat Pay about a payment (积分同步), and when it tries again.

Pure rules, no I/O. Every credited WeChat payment is reported, 0-point ones too (with the
reason): the platform shows the shopper the result, and only a payment whose points were
synced gets its refund notified to the mall. Payments that did not come through WeChat Pay
(a tenant's POS report) have no openid and are not the platform's business.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from points.domain.model import FEN_PER_YUAN, AttributedRefund, Credit

#: Shown to the shopper in WeChat when a payment earned nothing.
REMARK_UNDER_ONE_YUAN = "金额不足1元"
REMARK_NOT_ELIGIBLE = "本次消费不参与积分"
#: After a refund: followed by the points taken back for this payment so far.
REMARK_REFUNDED = "退款扣减积分"
#: Until points keeps its own copy of the directory (member owns each mall's time zone,
#: published as ``member.directory.*``), every mall reports in the default zone.
DEFAULT_TIME_ZONE = "Asia/Shanghai"


class SyncKind(enum.StrEnum):
    CREDIT = "credit"
    REVERSAL = "reversal"


class SyncState(enum.StrEnum):
    PENDING = "PENDING"  # to send, now or at next_attempt_at
    SENT = "SENT"  # the platform answered 204, verified
    FAILED = "FAILED"  # the platform refused it: ops look, fix, and re-queue


@dataclass(frozen=True)
class PointsReport:
    """One points sync as the platform will receive it (the time is added when queued)."""

    mall_id: str
    transaction_id: str
    kind: SyncKind
    openid: str
    appid: str
    earn_points: bool
    increased_points: int
    total_points: int
    no_points_remarks: str | None = None
    sub_mchid: str | None = None  # service-provider mode; from the directory, later


def no_points_remark(credit: Credit) -> str:
    if credit.payment.amount_fen < FEN_PER_YUAN:
        return REMARK_UNDER_ONE_YUAN
    return REMARK_NOT_ELIGIBLE


def report_for(credit: Credit) -> PointsReport | None:
    """The report a credit owes the platform, or None (a repeat, or not a WeChat payment)."""
    p = credit.payment
    if not credit.applied or not p.openid:
        return None
    earned = credit.points > 0
    return PointsReport(
        mall_id=p.mall_id,
        transaction_id=p.transaction_id,
        kind=SyncKind.CREDIT,
        openid=p.openid,
        appid=p.appid,
        earn_points=earned,
        increased_points=credit.points,
        total_points=credit.balance_after,
        no_points_remarks=None if earned else no_points_remark(credit),
    )


def retry_delay(attempts: int, *, base_s: float, cap_s: float, jitter: float) -> float:
    """Seconds until the next try after ``attempts`` tries: exponential, capped, jittered.

    "Equal jitter": half the exponential step is kept, the other half is random
    (``jitter`` in [0, 1)), so replicas retrying together spread out yet never hammer.
    """
    if attempts < 1:
        raise ValueError("a retry follows at least one attempt")
    step = min(cap_s, base_s * 2.0 ** min(attempts - 1, 62))
    return step / 2 + step / 2 * jitter


def reversal_report(
    refund: AttributedRefund, reversed_total: int, balance_after: int
) -> PointsReport | None:
    """What the platform is told after a refund: no points earned by the payment any more
    (beyond what is left), the points taken back so far, and the member's balance now."""
    if not refund.openid:
        return None
    return PointsReport(
        mall_id=refund.mall_id,
        transaction_id=refund.transaction_id,
        kind=SyncKind.REVERSAL,
        openid=refund.openid,
        appid=refund.appid,
        earn_points=False,
        increased_points=0,
        total_points=balance_after,
        no_points_remarks=f"{REMARK_REFUNDED}{reversed_total}",
    )
