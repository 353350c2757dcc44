"""The mini-program API's wire shapes: pydantic models that validate what comes in, build what
goes out, and are the OpenAPI 3.1 spec's schemas (``entrypoints.openapi``), so the document
cannot drift from what the handlers accept and answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from kit.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field, ValidationError

M = TypeVar("M", bound=BaseModel)


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Out(BaseModel):
    """An answer: every field is always present (nullable ones as null)."""

    model_config = ConfigDict(extra="forbid", json_schema_mode_override="serialization")


# -- requests ----------------------------------------------------------------------------------


class CreateSessionBody(Wire):
    """Exchange a ``wx.login`` code of the mall's mini-program for the gateway's tokens."""

    appid: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Mini-program appid")]
    code: Annotated[str, Field(min_length=1, max_length=256, description="The wx.login code")]


class RefreshSessionBody(Wire):
    """Trade a refresh token (once) for a new pair."""

    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class JoinBody(Wire):
    """Become a member of the session's mall with the phone number the shopper consented to."""

    phone: Annotated[
        str,
        Field(
            pattern=r"^(\+86|0086)?1[3-9][0-9]{9}$",
            description="Mainland mobile number, bare or with +86",
        ),
    ]


class PointsQuery(Wire):
    page_size: Annotated[int, Field(ge=1, le=100, description="Ledger entries on the page")] = 20
    page_token: Annotated[
        str,
        Field(pattern=r"^[0-9]{0,18}$", description="next_page_token of the previous page"),
    ] = ""


class LedgerQuery(Wire):
    cursor: Annotated[
        str,
        Field(
            pattern=r"^[0-9]{0,18}$",
            description="next_cursor of the previous page; empty for the newest entries",
        ),
    ] = ""
    limit: Annotated[int, Field(ge=1, le=100, description="Entries on the page")] = 20


# -- answers -----------------------------------------------------------------------------------


class Member(Out):
    member_id: str
    mall_id: str
    tier_code: str
    status: str
    joined_at: str | None = Field(description="RFC 3339, UTC")
    phone_masked: str | None


class MemberSummary(Out):
    member_id: str
    tier_code: str


class Tokens(Out):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds the access token is good for")
    refresh_token: str
    refresh_expires_in: int


class LoggedIn(Tokens):
    member: MemberSummary | None = Field(description="null until the shopper is a member")


class Joined(Tokens):
    member: Member
    created: bool = Field(description="true when this call made them a member")


class LedgerEntry(Out):
    entry_id: str
    kind: str = Field(description="credit, reversal, redemption, hold, release, expiry, ...")
    points: int
    balance_after: int
    transaction_id: str
    description: str
    created_at: str = Field(description="RFC 3339, UTC")


class PointsSummary(Out):
    mall_id: str
    member_id: str
    balance: int
    available: int
    lifetime_earned: int
    ledger: list[LedgerEntry]
    next_page_token: str | None


class LedgerPage(Out):
    entries: list[LedgerEntry] = Field(description="Newest first")
    next_cursor: str | None = Field(description="Pass as cursor for older entries; null: no more")


class CheckoutCode(Out):
    code: str
    expires_at: str = Field(description="RFC 3339, UTC")


class Unavailable(Out):
    status: Literal["unavailable"]
    reason: Literal["timeout", "error", "not_connected"] = Field(
        description="timeout: the service missed the section's deadline; error: it failed; "
        "not_connected: this gateway does not reach that service (yet)"
    )


class TierSection(Out):
    status: Literal["ok"]
    tier_code: str
    member_status: str


class ExpiringPoints(Out):
    points: int
    expires_at: str


class PointsSection(Out):
    status: Literal["ok"]
    balance: int
    available: int
    expiring_soon: ExpiringPoints | None = Field(
        description=(
            "The points that expire first (lots sharing the earliest expiry);"
            " null when none are due to expire"
        )
    )


class CouponsSection(Out):
    status: Literal["ok"]
    usable: int = Field(description="Coupons the member still has to use")
    next_expiry: str | None = Field(
        description="The soonest end of validity among them (RFC 3339, UTC); null: none"
    )


class ParkingSection(Out):
    """Today's parking benefit, as the member's stay in progress gets it."""

    status: Literal["ok"]
    parked: bool = Field(description="One of the member's vehicles is in a car park now")
    car_park_id: str | None
    entered_at: str | None = Field(description="RFC 3339, UTC")
    free_minutes_today: int | None = Field(
        description="Free minutes the stay gets (tier, the day's spend, coupons); when not "
        "parked, what a stay ending today would get (tier, today's spend, usable coupons)"
    )
    payable_fen: int | None = Field(description="Left to pay if the car left now")
    valid_until: str = Field(
        description="The end of the mall's business day (RFC 3339, UTC): the spend benefit "
        "counts the spend of the days of the stay"
    )


class Card(Out):
    """The member card: one section per service; any section may be unavailable alone."""

    mall_id: str
    member_id: str
    built_at: str = Field(description="When the sections were read (RFC 3339, UTC)")
    member: TierSection | Unavailable
    points: PointsSection | Unavailable
    coupons: CouponsSection | Unavailable
    parking: ParkingSection | Unavailable


class Problem(Out):
    """RFC 9457 problem details; ``code`` is stable, match on it."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    code: str
    detail: str
    message: str


class PlatformRefusal(Out):
    """What WeChat Pay reads from a refused notification (it retries)."""

    code: Literal["FAIL"]
    message: str
    error_code: str


class Health(Out):
    status: Literal["ok"]


class Readiness(Out):
    status: Literal["ready", "not ready"]
    waiting_for: list[str] = Field(description="What must come up before payments are accepted")
    backends: dict[str, Literal["reachable", "unreachable"]] = Field(
        description="gRPC services the mini-program API calls (informational: a backend "
        "down degrades the API, it does not stop payments being accepted)"
    )


# -- coupons (gateway.entrypoints.coupons) ----------------------------------------------------

_ID = r"^[A-Za-z0-9_-]{1,64}$"
_REQUEST_ID = Field(
    pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
    description="The app's idempotency key for this claim: a retry with it returns the same coupon",
)


class CouponsQuery(Wire):
    status: Annotated[
        Literal["all", "usable", "used", "expired"],
        Field(description="Only these coupons (usable: available, not yet used)"),
    ] = "all"
    cursor: Annotated[
        str,
        Field(
            pattern=r"^([0-9]{1,16}:[A-Za-z0-9_-]{1,64})?$",
            description="next_cursor of the previous page; empty for the newest coupons",
        ),
    ] = ""
    limit: Annotated[int, Field(ge=1, le=100, description="Coupons on the page")] = 20


class ClaimBody(Wire):
    """Claim a coupon of a stock."""

    stock_id: Annotated[str, Field(pattern=_ID, description="The stock to claim from")]
    request_id: Annotated[str, _REQUEST_ID]


class ClaimByCodeBody(Wire):
    """Claim with a code from a package card or a shopping guide's badge."""

    code: Annotated[str, Field(pattern=_ID, description="The code")]
    request_id: Annotated[str, _REQUEST_ID]


class AcceptCommitmentBody(Wire):
    """Accept a commitment card (支付分先享卡) of an offer."""

    offer_id: Annotated[str, Field(pattern=_ID, description="The offer")]


class Coupon(Out):
    coupon_id: str = Field(description="Also the code the shopper shows at the till")
    stock_id: str
    tenant_id: str = Field(description="Empty for a coupon of the mall itself")
    status: Literal["available", "used", "expired", "revoked", "unspecified"]
    channel: str = Field(description="mini_program, post_payment, points, package_card, ...")
    title: str
    coupon_type: Literal["fixed_amount", "percent_off", "exchange", "parking", "unspecified"]
    discount_fen: int
    threshold_fen: int
    percent_off: int
    max_discount_fen: int
    parking_minutes: int
    claimed_at: str = Field(description="RFC 3339, UTC")
    valid_from: str
    valid_until: str = Field(description="End of validity, exclusive")
    redeemed_at: str | None
    redeemed_store_id: str | None


class CouponsPage(Out):
    coupons: list[Coupon] = Field(description="Newest first")
    next_cursor: str | None = Field(description="Pass as cursor for older ones; null: no more")


class Clawback(Out):
    status: Literal["pending", "collected", "refused", "unspecified"]
    amount_fen: int


class CommitmentCard(Out):
    card_id: str
    offer_id: str
    tenant_id: str
    status: Literal["active", "fulfilled", "failed", "unspecified"]
    purchases_required: int
    purchases_made: int
    min_amount_fen: int
    discount_fen: int = Field(description="Taken off each counted purchase")
    discount_given_fen: int
    accepted_at: str
    deadline: str = Field(description="End of the window, exclusive")
    settled_at: str | None
    store_ids: list[str]
    clawback: Clawback | None = Field(description="Set once a failed card is clawed back")


class CommitmentCards(Out):
    cards: list[CommitmentCard] = Field(description="Newest first (at most 100)")


# -- reading requests --------------------------------------------------------------------------


def _invalid(error: ValidationError) -> InvalidInput:
    first: Any = error.errors(include_url=False)[0]
    loc = [str(part) for part in first.get("loc", ()) if isinstance(part, str)]
    if not loc:
        return InvalidInput("invalid_json", "the body must be a JSON object")
    return InvalidInput(f"invalid_{loc[0]}", f"{loc[0]}: {first.get('msg', 'invalid')}")


async def body(request: web.Request, model: type[M]) -> M:
    """The JSON body as ``model``; ``invalid_json`` / ``invalid_<field>`` (400) otherwise."""
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise _invalid(exc) from None


def query(request: web.Request, model: type[M]) -> M:
    """The query string as ``model`` (unknown parameters are ignored)."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise _invalid(exc) from None


def answer(
    model: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )
