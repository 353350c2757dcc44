"""Typed keys of the application's and the request's state."""

from __future__ import annotations

from aiohttp import web

from wechatpay_simulator.config import Merchant, Settings
from wechatpay_simulator.delivery import Deliverer
from wechatpay_simulator.state import PlatformState

SETTINGS = web.AppKey("settings", Settings)
STATE = web.AppKey("state", PlatformState)
DELIVERER = web.AppKey("deliverer", Deliverer)
#: The merchant whose signature a platform API request carried (set by the guard).
MERCHANT = web.RequestKey("merchant", Merchant)
