"""Every route of the gateway, in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.entrypoints import live, shoppers, views, webhooks


def setup_routes(
    app: web.Application, *, accept_unsigned: bool = False, shopper_api: bool = False
) -> None:
    app.router.add_post("/wechatpay/notifications/{mchid}", webhooks.signed_notification)
    if accept_unsigned:  # local demos only: WECHATPAY_ACCEPT_UNSIGNED=true
        app.router.add_post("/wechatpay/notifications", webhooks.unsigned_notification)
    if shopper_api:  # the mini-program's API: MINIPROGRAM_SECRETS_FILE and SESSION_SIGNING_KEY
        app.router.add_post("/v1/session", shoppers.create_session)
        app.router.add_post("/v1/session/refresh", shoppers.refresh_session)
        app.router.add_get("/v1/me", shoppers.me)
        app.router.add_post("/v1/me/join", shoppers.join)
        app.router.add_get("/v1/me/points", shoppers.points)
        app.router.add_get("/v1/me/checkout-code", shoppers.checkout_code)
        app.router.add_get("/v1/me/events", live.events)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
