"""Every route of the gateway, in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.entrypoints import views


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/wechatpay/notifications", views.wechatpay_notification)
    app.router.add_get("/v1/malls/{mall_id}/shoppers/{openid}/points", views.member_points)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
