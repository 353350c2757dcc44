"""``/v1/me/plates`` and ``/v1/me/parking``: the shopper's plates and their car in the park
now. Parking's refusals (``invalid_plate``, ``plate_bound_elsewhere``, ``too_many_plates``)
come back as problem+json with parking's stable codes."""

from __future__ import annotations

from aiohttp import web
from kit.errors import InvalidInput
from pydantic import ValidationError

from gateway.adapters import parking
from gateway.entrypoints import parking_schemas as P
from gateway.entrypoints import schemas
from gateway.entrypoints.keys import BACKENDS, SESSION
from gateway.service_layer import sessions

_FIELDS = ("plate_number", "plate_color", "pay_with_points")


async def _plate_body(request: web.Request) -> P.FuelPlateBody | P.NewEnergyPlateBody:
    try:
        return P.BindPlateBody.model_validate_json(await request.read() or b"null").root
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        named = [str(part) for part in first.get("loc", ()) if part in _FIELDS]
        if first.get("type") == "union_tag_invalid" or first.get("type") == "union_tag_not_found":
            named = ["plate_color"]
        if not named:
            raise InvalidInput("invalid_json", "the body must be a JSON object") from None
        raise InvalidInput(
            f"invalid_{named[-1]}", f"{named[-1]}: {first.get('msg', 'invalid')}"
        ) from None


async def plates(request: web.Request) -> web.Response:
    """``GET /v1/me/plates``: the member's plates."""
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    found = await parking.list_plates(
        backends.parking, session.mall_id, member_id, backends.timeout_s
    )
    return schemas.answer(P.Plates.model_validate({"plates": found}))


async def bind_plate(request: web.Request) -> web.Response:
    """``POST /v1/me/plates {plate_number, plate_color, pay_with_points}``."""
    body = await _plate_body(request)
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    bound = await parking.bind_plate(
        backends.parking,
        session.mall_id,
        member_id,
        plate_number=body.plate_number,
        plate_color=body.plate_color,
        pay_with_points=body.pay_with_points,
        timeout_s=backends.timeout_s,
    )
    return schemas.answer(P.Plate.model_validate(bound))


async def unbind_plate(request: web.Request) -> web.Response:
    """``DELETE /v1/me/plates/{plate_number}``: 204; 404 ``plate_not_bound`` when it is not
    one of the member's plates."""
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    await parking.unbind_plate(
        backends.parking,
        session.mall_id,
        member_id,
        request.match_info["plate_number"],
        backends.timeout_s,
    )
    return web.Response(status=204)


async def stay(request: web.Request) -> web.Response:
    """``GET /v1/me/parking``: the member's car in the park now, the fee so far, the benefits
    applied to it live and what is left to pay."""
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    now = await parking.current_stay(
        backends.parking, session.mall_id, member_id, backends.timeout_s
    )
    return schemas.answer(P.Stay.model_validate(now), headers={"Cache-Control": "no-store"})


async def quote(request: web.Request) -> web.Response:
    """``POST /v1/me/parking/quote {use_points, request_id}``: the gate's price of leaving now,
    points held for it when asked."""
    body = await schemas.body(request, P.QuoteBody)
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    quoted = await parking.quote_before_leaving(
        backends.parking,
        session.mall_id,
        member_id,
        use_points=body.use_points,
        request_id=body.request_id,
        timeout_s=backends.timeout_s,
    )
    return schemas.answer(
        P.ParkingQuote.model_validate(quoted), headers={"Cache-Control": "no-store"}
    )


async def settle(request: web.Request) -> web.Response:
    """``POST /v1/me/parking/settle {session_id, quote_id, request_id}``: settle the stay on
    a quote with nothing left to pay; the exit gate then just opens until ``leave_by``."""
    body = await schemas.body(request, P.SettleBody)
    session, backends = request[SESSION], request.app[BACKENDS]
    member_id = await sessions.member_id_of(session, backends)
    settled = await parking.settle_before_leaving(
        backends.parking,
        session.mall_id,
        member_id,
        session_id=body.session_id,
        quote_id=body.quote_id,
        request_id=body.request_id,
        timeout_s=backends.timeout_s,
    )
    return schemas.answer(
        P.ParkingSettlement.model_validate(settled), headers={"Cache-Control": "no-store"}
    )
