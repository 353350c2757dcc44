"""What the platform tells the mall: payment, refund and authorisation notifications (and
signature probes), with the platform's rules for when it sends them.
"""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from typing import Any

from wechatpay_simulator.config import Merchant, Settings
from wechatpay_simulator.fields import ApiError, Fields, param_error
from wechatpay_simulator.notifications import new_delivery
from wechatpay_simulator.state import (
    Authorization,
    AuthorizeState,
    Delivery,
    EventType,
    Payment,
    PlatformState,
    Refund,
    now,
    rfc3339,
)

AUTH_TYPES = frozenset({"REGISTERED_MODE", "REGISTERED_AND_AUTHORIZATION_MODE"})
_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def new_transaction_id() -> str:
    """28 digits like the platform's: ``4200`` + date + 16 random digits."""
    return f"4200{now():%Y%m%d}{secrets.randbelow(10**16):016d}"


def new_refund_id() -> str:
    return f"5030{now():%Y%m%d}{secrets.randbelow(10**17):017d}"


def _merchant(state: PlatformState, mchid: str) -> Merchant:
    merchant = state.merchants.get(mchid)
    if merchant is None:
        raise param_error(f"mchid {mchid} is not a merchant of this simulator")
    return merchant


def _notify_url(merchant: Merchant, event_type: EventType, override: str | None) -> str:
    url = override or merchant.url_for(event_type)
    if not url:
        raise param_error(f"merchant {merchant.mchid} has no notify_url; configure one or pass it")
    return url


def _identifier(fields: Fields, name: str) -> str | None:
    value = fields.optional_string(name, max_len=64)
    if value is not None and not _ID.fullmatch(value):
        raise param_error(f"{name} may hold letters, digits, '_' and '-' only")
    return value


def payment(state: PlatformState, body: dict[str, Any]) -> Delivery:
    """MALL_TRANSACTION.SUCCESS: a shopper paid in a store of the mall."""
    f = Fields(body)
    merchant = _merchant(state, f.string("mchid", max_len=32))
    notify_url = _notify_url(
        merchant, EventType.PAYMENT, f.optional_string("notify_url", max_len=2048)
    )
    transaction_id = _identifier(f, "transaction_id") or new_transaction_id()
    if transaction_id in state.payments:
        raise ApiError(409, "DUPLICATE_TRANSACTION", f"{transaction_id} was already notified")
    shop_number = f.string("shop_number", max_len=64)
    shop_name = f.optional_string("shop_name") or shop_number
    time_end = f.optional_time("time_end") or now()
    resource: dict[str, Any] = {
        "mchid": merchant.mchid,
        "merchant_name": f.optional_string("merchant_name") or shop_name,
        "shop_name": shop_name,
        "shop_number": shop_number,
        "appid": f.string("appid"),
        "openid": f.string("openid", max_len=64),
        "time_end": rfc3339(time_end),
        "amount": f.integer("amount", minimum=1),
        "transaction_id": transaction_id,
    }
    commit_tag = f.optional_string("commit_tag", max_len=64)
    if commit_tag is not None:
        resource["commit_tag"] = commit_tag
    delivery = new_delivery(merchant, EventType.PAYMENT, resource, notify_url=notify_url)
    state.add_payment(
        Payment(
            transaction_id=transaction_id,
            mchid=merchant.mchid,
            sub_mchid=f.optional_string("sub_mchid", max_len=32),
            appid=resource["appid"],
            openid=resource["openid"],
            amount=resource["amount"],
            time_end=time_end,
            resource=resource,
            notification_id=delivery.id,
        )
    )
    state.deliveries[delivery.id] = delivery
    return delivery


def refund(state: PlatformState, settings: Settings, body: dict[str, Any]) -> Delivery:
    """MALL_REFUND.SUCCESS, sent only for a payment whose points were synced, within 30 days."""
    f = Fields(body)
    transaction_id = f.string("transaction_id", max_len=64)
    paid = state.payments.get(transaction_id)
    if paid is None:
        raise ApiError(404, "RESOURCE_NOT_EXISTS", f"no payment {transaction_id} was notified")
    refund_amount = f.integer("refund_amount", minimum=1)
    refund_id = _identifier(f, "refund_id") or new_refund_id()
    refund_time = f.optional_time("refund_time") or now()
    merchant = _merchant(state, paid.mchid)
    notify_url = _notify_url(
        merchant, EventType.REFUND, f.optional_string("notify_url", max_len=2048)
    )
    if settings.require_synced_points_for_refund and not state.points_synced(transaction_id):
        raise ApiError(
            409,
            "POINTS_NOT_SYNCED",
            f"the platform sends refunds only for payments whose points were synced; "
            f"{transaction_id} has no points sync yet",
        )
    if refund_time - paid.time_end > timedelta(days=settings.refund_window_days):
        raise ApiError(
            409,
            "REFUND_WINDOW_CLOSED",
            f"refunds are notified within {settings.refund_window_days} days",
        )
    if refund_id in state.refunds:
        raise ApiError(409, "DUPLICATE_REFUND", f"{refund_id} was already notified")
    if refund_amount > paid.amount - paid.refunded:
        raise param_error(
            f"refund_amount exceeds what is left of the payment ({paid.amount - paid.refunded})"
        )
    original = paid.resource
    resource = {
        "mchid": paid.mchid,
        "merchant_name": original["merchant_name"],
        "shop_name": original["shop_name"],
        "shop_number": original["shop_number"],
        "appid": paid.appid,
        "openid": paid.openid,
        "refund_time": rfc3339(refund_time),
        "pay_amount": paid.amount,
        "refund_amount": refund_amount,
        "transaction_id": transaction_id,
        "refund_id": refund_id,
    }
    delivery = new_delivery(merchant, EventType.REFUND, resource, notify_url=notify_url)
    paid.refunded += refund_amount
    state.refunds[refund_id] = Refund(refund_id, transaction_id, refund_amount, delivery.id)
    state.deliveries[delivery.id] = delivery
    return delivery


def authorization(state: PlatformState, body: dict[str, Any]) -> Delivery:
    """MALL_AUTH.ACTIVATE_CARD: the shopper authorised points (activated the member card)."""
    f = Fields(body)
    merchant = _merchant(state, f.string("mchid", max_len=32))
    url = _notify_url(
        merchant, EventType.AUTHORIZATION, f.optional_string("notify_url", max_len=2048)
    )
    auth_type = f.string("auth_type", max_len=64)
    if auth_type not in AUTH_TYPES:
        raise param_error(f"auth_type must be one of {', '.join(sorted(AUTH_TYPES))}")
    appid = f.string("appid")
    openid = f.string("openid", max_len=64)
    code = f.optional_string("code", max_len=64)
    resource: dict[str, Any] = {"openid": openid, "appid": appid, "mchid": merchant.mchid}
    if code is not None:
        resource["code"] = code
    resource["auth_type"] = auth_type
    delivery = new_delivery(merchant, EventType.AUTHORIZATION, resource, notify_url=url)
    state.authorizations[(merchant.mchid, appid, openid)] = Authorization(
        merchant.mchid, appid, openid, code, auth_type, AuthorizeState.AUTHORIZED, now()
    )
    state.deliveries[delivery.id] = delivery
    return delivery


def deauthorization(state: PlatformState, body: dict[str, Any]) -> Authorization:
    """The shopper withdrew the authorisation (no notification; the query tells)."""
    f = Fields(body)
    key = (f.string("mchid", max_len=32), f.string("appid"), f.string("openid", max_len=64))
    auth = state.authorizations.get(key)
    if auth is None:
        raise ApiError(404, "RESOURCE_NOT_EXISTS", "that shopper never authorised this mall")
    auth.state = AuthorizeState.DEAUTHORIZED
    auth.deauthorize_time = now()
    return auth


def probe(state: PlatformState, body: dict[str, Any]) -> Delivery:
    """A payment-shaped notification signed ``WECHATPAY/SIGNTEST/…``: the mall must refuse it."""
    f = Fields(body)
    merchant = _merchant(state, f.string("mchid", max_len=32))
    url = _notify_url(merchant, EventType.PAYMENT, f.optional_string("notify_url", max_len=2048))
    resource = {
        "mchid": merchant.mchid,
        "merchant_name": "Signature probe",
        "shop_name": "Signature probe",
        "shop_number": "PROBE",
        "appid": "wxprobe",
        "openid": "probe",
        "time_end": rfc3339(now()),
        "amount": 1,
        "transaction_id": new_transaction_id(),
    }
    delivery = new_delivery(merchant, EventType.PAYMENT, resource, notify_url=url, probe=True)
    state.deliveries[delivery.id] = delivery
    return delivery
