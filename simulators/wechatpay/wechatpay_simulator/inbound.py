"""What the mall asks of the platform: points sync and the two smart-mall queries, with the
platform's rules for what it accepts.
"""

from __future__ import annotations

from typing import Any

from wechatpay_simulator.config import Merchant
from wechatpay_simulator.fields import ApiError, Fields, param_error
from wechatpay_simulator.state import AuthorizeState, Fault, PlatformState

#: Operations a test can make fail with ``POST /control/faults``.
FAULTABLE = frozenset({"points_notify", "user_authorization", "commit_status", "jscode2session"})
_FAULT_CODES = {
    400: "PARAM_ERROR",
    403: "NO_AUTH",
    404: "RESOURCE_NOT_EXISTS",
    429: "FREQUENCY_LIMITED",
}


def fault_error(fault: Fault) -> ApiError:
    code = _FAULT_CODES.get(fault.status, "SYSTEM_ERROR")
    return ApiError(fault.status, code, "injected fault (POST /control/faults)")


def check_points_sync(state: PlatformState, merchant: Merchant, body: Any) -> None:
    """Refuse (PARAM_ERROR) a points sync the platform would refuse; else it is accepted."""
    if not isinstance(body, dict):
        raise param_error("the body must be a JSON object")
    f = Fields(body)
    appid = f.string("appid")
    transaction_id = f.string("transaction_id", max_len=64)
    openid = f.string("openid", max_len=64)
    earn_points = f.boolean("earn_points")
    f.integer("increased_points", minimum=0)
    f.time("points_update_time")
    remarks = f.optional_string("no_points_remarks", max_len=128)
    f.optional_integer("total_points", minimum=0)
    sub_mchid = f.optional_string("sub_mchid", max_len=64)
    if not earn_points and remarks is None:
        raise param_error("no_points_remarks is required when earn_points is false")
    paid = state.payments.get(transaction_id)
    if paid is None or paid.mchid != merchant.mchid:
        raise param_error(f"transaction_id {transaction_id} is not a payment notified to you")
    if paid.openid != openid:
        raise param_error("openid is not the shopper of that payment")
    if paid.appid != appid:
        raise param_error("appid is not the one of that payment")
    if sub_mchid is not None and paid.sub_mchid is not None and sub_mchid != paid.sub_mchid:
        raise param_error("sub_mchid is not the one of that payment")


def user_authorization(
    state: PlatformState, merchant: Merchant, openid: str, query: dict[str, str]
) -> dict[str, Any]:
    appid = query.get("appid")
    if not appid:
        raise param_error("appid is required")
    auth = state.authorizations.get((merchant.mchid, appid, openid))
    if auth is None:
        return {
            "openid": openid,
            "appid": appid,
            "authorize_state": AuthorizeState.UNAUTHORIZED.value,
        }
    return auth.answer()


def commit_status(
    state: PlatformState, merchant: Merchant, openid: str, query: dict[str, str]
) -> dict[str, Any]:
    """PENDING while a payment of the shopper still waits for its points sync."""
    appid, brandid = query.get("appid"), query.get("brandid")
    if not appid:
        raise param_error("appid is required")
    if not brandid:
        raise param_error("brandid is required")
    pending = state.pending_points(merchant.mchid, appid, openid)
    return {
        "openid": openid,
        "appid": appid,
        "brandid": int(brandid) if brandid.isdigit() else brandid,
        "commit_status": "PENDING" if pending else "FINISHED",
    }
