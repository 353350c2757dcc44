"""Every route of the gateway, in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.entrypoints import views, webhooks


def setup_routes(app: web.Application, *, accept_unsigned: bool = False) -> None:
    app.router.add_post("/wechatpay/notifications/{mchid}", webhooks.signed_notification)
    if accept_unsigned:  # local demos only: WECHATPAY_ACCEPT_UNSIGNED=true
        app.router.add_post("/wechatpay/notifications", webhooks.unsigned_notification)
    app.router.add_get("/v1/malls/{mall_id}/shoppers/{openid}/points", views.member_points)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
