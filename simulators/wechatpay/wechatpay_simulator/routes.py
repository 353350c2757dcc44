"""Every route of the simulator, in one place."""

from __future__ import annotations

from aiohttp import web

from wechatpay_simulator import bill, busifavor, load, miniprogram, parking, payscore, views


def setup_routes(app: web.Application) -> None:
    # The platform API (mall -> platform): merchant-signed requests, platform-signed answers.
    app.router.add_post("/v3/businesscircle/points/notify", views.points_notify)
    app.router.add_get("/v3/businesscircle/user-authorizations/{openid}", views.user_authorization)
    app.router.add_get(
        "/v3/businesscircle/users/{openid}/points/commit_status", views.commit_status
    )
    # Mini-program login (api.weixin.qq.com): a wx.login code for the shopper's openid.
    app.router.add_get("/sns/jscode2session", miniprogram.jscode2session)
    # Control: make the platform notify the mall.
    app.router.add_post("/control/payments", views.create_payment)
    app.router.add_post("/control/refunds", views.create_refund)
    app.router.add_post("/control/authorizations", views.create_authorization)
    app.router.add_post("/control/deauthorizations", views.create_deauthorization)
    app.router.add_post("/control/probes", views.create_probe)
    app.router.add_get("/control/notifications", views.list_notifications)
    app.router.add_get("/control/notifications/{id}", views.get_notification)
    app.router.add_post("/control/notifications/{id}/redeliver", views.redeliver_notification)
    # Control: what the platform received and knows; faults to inject.
    app.router.add_get("/control/points-syncs", views.list_points_syncs)
    app.router.add_get("/control/bill", bill.get_bill)
    app.router.add_post("/control/faults", views.set_faults)
    app.router.add_delete("/control/faults", views.clear_faults)
    app.router.add_get("/control/platform", views.platform_info)
    app.router.add_put("/control/merchants/{mchid}", views.put_merchant)
    app.router.add_post("/control/login-codes", miniprogram.create_login_code)
    app.router.add_get("/healthz", views.healthz)
    # Pay-score deductions (commitment card clawbacks): routes and state of their own.
    payscore.setup_routes(app)
    # Merchant coupons (商家券) mirrored into the card package: routes and state of their own.
    busifavor.setup_routes(app)
    # Parking state sync and pay-score parking (car-park side): routes and state of their own.
    parking.setup_routes(app)
    # Load mode (bench/storm.py): pre-signed payment storms sent open loop at a rate.
    load.setup_routes(app)
