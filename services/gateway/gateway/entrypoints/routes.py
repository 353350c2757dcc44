"""Every route of the gateway, in one place: each is an ``Operation`` that is also documented
in ``/openapi.json`` (see ``entrypoints.openapi``)."""

from __future__ import annotations

from aiohttp import web

from gateway.domain.claims import CLAIM_CODES
from gateway.domain.rewards import REWARD_CODES
from gateway.entrypoints import coupons, live, schemas, shoppers, views, webhooks
from gateway.entrypoints import parking as parking_views
from gateway.entrypoints import parking_schemas as PS
from gateway.entrypoints import receipt_schemas as RS
from gateway.entrypoints import receipts as receipt_views
from gateway.entrypoints import reward_schemas as RW
from gateway.entrypoints import rewards as reward_views
from gateway.entrypoints.openapi import Operation, serve_spec

S = schemas


def _webhooks(accept_unsigned: bool) -> list[Operation]:
    ops = [
        Operation(
            "POST",
            "/wechatpay/notifications/{mchid}",
            webhooks.signed_notification,
            "A signed WeChat Pay notification (payment, refund, points authorisation)",
            status=204,
            tag="wechatpay",
            platform=True,
            errors={
                400: "invalid_signature, stale_timestamp, invalid_notification, ...",
                404: "unknown_merchant",
                409: "notification_id_reused",
                413: "body_too_large",
                422: "unknown_shop",
            },
            description="Answers 204 once the event is durably in JetStream; any other answer "
            "makes the platform retry. Refusals are in WeChat Pay's shape.",
        )
    ]
    if accept_unsigned:  # local demos only: WECHATPAY_ACCEPT_UNSIGNED=true
        ops.append(
            Operation(
                "POST",
                "/wechatpay/notifications",
                webhooks.unsigned_notification,
                "Local demos only: a plaintext payment notification",
                status=204,
                tag="wechatpay",
                errors={400: "invalid_json, invalid_notification", 413: "body_too_large"},
            )
        )
    return ops


def _mini_program() -> list[Operation]:
    member_errors = {404: "not_a_member"}
    return [
        Operation(
            "POST",
            "/v1/session",
            shoppers.create_session,
            "Log in with a wx.login code",
            answer=S.LoggedIn,
            body=S.CreateSessionBody,
            errors={
                401: "invalid_login_code",
                404: "unknown_miniprogram",
                502: "wechat_unavailable",
            },
        ),
        Operation(
            "POST",
            "/v1/session/refresh",
            shoppers.refresh_session,
            "A new token pair for a refresh token (each is good once)",
            answer=S.LoggedIn,
            body=S.RefreshSessionBody,
            errors={401: "invalid_session, refresh_token_reused"},
        ),
        Operation(
            "GET",
            "/v1/me",
            shoppers.me,
            "The shopper's member profile",
            answer=S.Member,
            auth=True,
            errors=member_errors,
        ),
        Operation(
            "POST",
            "/v1/me/join",
            shoppers.join,
            "Become a member of the session's mall (201 when new, 200 when already one)",
            answer=S.Joined,
            body=S.JoinBody,
            auth=True,
            extra_statuses={200: "Already a member"},
            status=201,
            errors={409: "identity_conflict"},
        ),
        Operation(
            "GET",
            "/v1/me/card",
            shoppers.card,
            "The member card: tier, points, coupons, parking (each section may be unavailable)",
            description="Served from the gateway's memory until a change event for the member "
            "(points, tier, coupons, parking) reaches it — before that event is pushed on "
            "/v1/me/events, so re-reading the card on an SSE event shows it — or the TTL (a "
            "few seconds) passes; `built_at` says when its sections were read.",
            answer=S.Card,
            auth=True,
            errors=member_errors,
        ),
        Operation(
            "GET",
            "/v1/me/points",
            shoppers.points,
            "Balance and a page of the ledger",
            answer=S.PointsSummary,
            query=S.PointsQuery,
            auth=True,
            errors=member_errors,
        ),
        Operation(
            "GET",
            "/v1/me/points/ledger",
            shoppers.ledger,
            "The points ledger, newest first",
            answer=S.LedgerPage,
            query=S.LedgerQuery,
            auth=True,
            errors={400: "invalid_page_token", **member_errors},
        ),
        Operation(
            "GET",
            "/v1/me/checkout-code",
            shoppers.checkout_code,
            "A short-lived code the tenant's POS scans",
            answer=S.CheckoutCode,
            auth=True,
            errors=member_errors,
        ),
        Operation(
            "GET",
            "/v1/me/events",
            live.events,
            "Live updates (Server-Sent Events): ready, then points (+N / -N), benefits, guide, "
            "parking",
            media_type="text/event-stream",
            auth=True,
            query_token=True,
            errors=member_errors,
            description="Reconnect with Last-Event-ID to get the events missed meanwhile; a "
            "`resync` event says some may be lost (re-read /v1/me/card). Event names are the "
            "first word of the data's `type`: `points` (points.credited / points.reversed), "
            "`benefits` (benefits.changed: a tier change's gained / lost benefits), `guide` "
            "(guide.bound), `parking` (parking.started / parking.settled of the member's car), "
            "`coupon` (coupon.issued / coupon.expiring / coupon.redeemed / coupon.revoked).",
        ),
    ]


def _coupons() -> list[Operation]:
    member_errors = {404: "not_a_member"}
    refusals = ", ".join(CLAIM_CODES)
    claim_errors = {
        400: "invalid_claim",
        403: "not_eligible, points_required",
        404: "not_a_member, stock_not_found, code_not_found",
        409: "sold_out, limit_reached, not_open_yet, claim_ended, paused, request_id_reused",
    }
    return [
        Operation(
            "GET",
            "/v1/me/coupons",
            coupons.list_coupons,
            "The coupon wallet, newest first (usable / used / expired)",
            answer=S.CouponsPage,
            query=S.CouponsQuery,
            auth=True,
            errors={400: "invalid_page_token", **member_errors},
        ),
        Operation(
            "POST",
            "/v1/me/coupons/claims",
            coupons.claim_coupon,
            "Claim a coupon of a stock (retrying a request_id returns the same coupon)",
            answer=S.Coupon,
            body=S.ClaimBody,
            auth=True,
            status=201,
            errors=claim_errors,
            description="A refusal's `code` is one of: " + refusals + "; `reason` carries "
            "coupons' own reason (e.g. stock_sold_out_today). Concurrent claims are sent to "
            "coupons together; once a stock is known exhausted the gateway answers sold_out "
            "itself.",
        ),
        Operation(
            "POST",
            "/v1/me/coupons/claims/by-code",
            coupons.claim_coupon_by_code,
            "Claim a coupon with a package-card or shopping-guide code",
            answer=S.Coupon,
            body=S.ClaimByCodeBody,
            auth=True,
            status=201,
            errors=claim_errors,
        ),
        Operation(
            "GET",
            "/v1/me/commitment-cards",
            coupons.list_commitment_cards,
            "The member's commitment cards (支付分先享卡), newest first",
            answer=S.CommitmentCards,
            auth=True,
            errors=member_errors,
        ),
        Operation(
            "POST",
            "/v1/me/commitment-cards",
            coupons.accept_commitment_card,
            "Accept a commitment card of an offer (accepting again returns the same card)",
            answer=S.CommitmentCard,
            body=S.AcceptCommitmentBody,
            auth=True,
            errors={404: "not_a_member, offer_not_found"},
        ),
    ]


def _rewards() -> list[Operation]:
    return [
        Operation(
            "GET",
            "/v1/me/rewards",
            reward_views.list_rewards,
            "Coupons to buy with points (积分兑换) whose claims are open now, newest first",
            answer=RW.RewardsPage,
            query=RW.RewardsQuery,
            auth=True,
            errors={400: "invalid_page_token", 404: "not_a_member"},
        ),
        Operation(
            "POST",
            "/v1/me/rewards/redeem",
            reward_views.redeem,
            "Buy a coupon with points (retrying a request_id returns the same coupon, spent once)",
            description="The points are held, the coupon claimed, then the hold spent; a "
            "refused claim gives the points back. A refusal's `code` is one of: "
            + ", ".join(sorted({*CLAIM_CODES, *REWARD_CODES}))
            + "; `reason` carries coupons' own reason for a refused claim. On 503 "
            "upstream_unavailable retry with the same request_id: the points stay held (at "
            "most 15 minutes) until the retry knows whether the coupon was claimed.",
            answer=RW.Redeemed,
            body=RW.RedeemBody,
            auth=True,
            status=201,
            errors={
                400: "invalid_claim",
                403: "not_eligible",
                404: "not_a_member, stock_not_found",
                409: "insufficient_points, not_for_points, sold_out, limit_reached, "
                "not_open_yet, claim_ended, paused, request_id_reused",
            },
        ),
    ]


def _parking_receipts_guides() -> list[Operation]:
    member_errors = {404: "not_a_member"}
    return [
        Operation(
            "GET",
            "/v1/me/plates",
            parking_views.plates,
            "The member's plates",
            answer=PS.Plates,
            auth=True,
            errors=member_errors,
        ),
        Operation(
            "POST",
            "/v1/me/plates",
            parking_views.bind_plate,
            "Bind a plate (again: changes pay_with_points)",
            answer=PS.Plate,
            body=PS.BindPlateBody,
            auth=True,
            errors={
                400: "invalid_plate_number, invalid_plate_color, invalid_plate",
                404: "not_a_member",
                409: "plate_bound_elsewhere, too_many_plates",
            },
        ),
        Operation(
            "DELETE",
            "/v1/me/plates/{plate_number}",
            parking_views.unbind_plate,
            "Unbind one of the member's plates",
            status=204,
            auth=True,
            errors={404: "not_a_member, plate_not_bound"},
        ),
        Operation(
            "GET",
            "/v1/me/parking",
            parking_views.stay,
            "The member's car in the park now: fee so far, benefits applied, left to pay",
            description="Priced as if the car left now; nothing is held. Paying with points "
            "is chosen per plate (pay_with_points) and happens at the exit gate, or before "
            "leaving with POST /v1/me/parking/quote and /settle.",
            answer=PS.Stay,
            auth=True,
            errors=member_errors,
        ),
        Operation(
            "POST",
            "/v1/me/parking/quote",
            parking_views.quote,
            "Quote the car in the park for leaving now (to settle before leaving)",
            description="The exit gate's fee and benefits; with use_points, points buy the "
            "hours still needed and are held until the quote is settled or expires. The same "
            "request_id returns the same quote.",
            answer=PS.ParkingQuote,
            body=PS.QuoteBody,
            auth=True,
            errors={404: "not_a_member, session_not_found", 409: "session_prepaid"},
        ),
        Operation(
            "POST",
            "/v1/me/parking/settle",
            parking_views.settle,
            "Settle the stay before leaving: the exit gate then just opens",
            description="Only a quote with nothing left to pay (benefits, points) settles "
            "here; money is paid at the exit machine or by WeChat Pay pay-score. The gate opens "
            "without payment until leave_by; later, the extra time is charged there. The same "
            "request_id returns the same settlement.",
            answer=PS.ParkingSettlement,
            body=PS.SettleBody,
            auth=True,
            errors={
                404: "not_a_member, session_not_found, quote_not_found",
                409: "payment_required, quote_expired, coupon_used, session_prepaid",
            },
        ),
        Operation(
            "GET",
            "/v1/me/receipts",
            receipt_views.list_receipts,
            "E-receipts: the member's payments, newest first",
            answer=RS.ReceiptPage,
            query=RS.ReceiptsQuery,
            auth=True,
            errors={400: "invalid_page_token", **member_errors},
        ),
        Operation(
            "GET",
            "/v1/me/receipts/{transaction_id}",
            receipt_views.get_receipt,
            "One e-receipt: amount, store, time, points earned, the store's guides",
            description="Another member's payment is answered like one that does not exist.",
            answer=RS.ReceiptDetail,
            auth=True,
            errors={404: "not_a_member, receipt_not_found"},
        ),
        Operation(
            "GET",
            "/v1/me/guides",
            receipt_views.list_guides,
            "The member's shopping guides (one per tenant)",
            answer=RS.Guides,
            auth=True,
            errors=member_errors,
        ),
        Operation(
            "POST",
            "/v1/me/guides",
            receipt_views.bind_guide,
            "Choose a shopping guide of a store where the member paid",
            answer=RS.BoundGuide,
            body=RS.BindGuideBody,
            auth=True,
            errors={404: "not_a_member, guide_not_found", 409: "no_payment_at_store"},
        ),
    ]


def _probes() -> list[Operation]:
    return [
        Operation("GET", "/healthz", views.healthz, "Liveness", answer=S.Health, tag="ops"),
        Operation(
            "GET",
            "/readyz",
            views.readyz,
            "Readiness: NATS connected, directory loaded",
            answer=S.Readiness,
            tag="ops",
            extra_statuses={503: "Not ready (same body)"},
        ),
        Operation(
            "GET",
            "/metrics",
            views.metrics,
            "Prometheus metrics",
            tag="ops",
            media_type="text/plain",
        ),
    ]


def operations(*, accept_unsigned: bool = False, shopper_api: bool = False) -> list[Operation]:
    return [
        *_webhooks(accept_unsigned),
        *(_mini_program() if shopper_api else []),
        *(_parking_receipts_guides() if shopper_api else []),
        *(_coupons() if shopper_api else []),
        *(_rewards() if shopper_api else []),
        *_probes(),
    ]


def setup_routes(
    app: web.Application, *, accept_unsigned: bool = False, shopper_api: bool = False
) -> None:
    ops = operations(accept_unsigned=accept_unsigned, shopper_api=shopper_api)
    for op in ops:
        app.router.add_route(op.method, op.path, op.handler)
    serve_spec(app, ops)
