"""Wire shapes of the shopper's plates and stay in the car park (``entrypoints.parking``); the
same pydantic models validate, answer and go into ``/openapi.json`` (see ``schemas``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, RootModel

from gateway.entrypoints.schemas import Out, Wire

#: Chinese plates as parking accepts them, already normalised (upper case, no spaces or dots):
#: a province, the city letter (never I or O), then 5 characters (the last may be special) for
#: fuel plates (blue, yellow, black, white) or 6 for new-energy ones (green, limegreen).
_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_CHAR = "A-HJ-NP-Z0-9"
FUEL_PLATE = f"^[{_PROVINCES}][A-HJ-NP-Z](?:[{_CHAR}]{{5}}|[{_CHAR}]{{4}}[挂学警港澳领使])$"
NEW_ENERGY_PLATE = f"^[{_PROVINCES}][A-HJ-NP-Z][{_CHAR}]{{6}}$"
_POINTS = Field(
    description="At the exit, buy the hours benefits do not cover with points (the mall's rate)"
)


class FuelPlateBody(Wire):
    """A fuel vehicle's plate (7 characters)."""

    plate_number: Annotated[str, Field(pattern=FUEL_PLATE, description="e.g. 粤B12345")]
    plate_color: Literal["blue", "yellow", "black", "white"]
    pay_with_points: Annotated[bool, _POINTS] = False


class NewEnergyPlateBody(Wire):
    """A new-energy vehicle's plate (8 characters)."""

    plate_number: Annotated[str, Field(pattern=NEW_ENERGY_PLATE, description="e.g. 粤BD12345")]
    plate_color: Literal["green", "limegreen"]
    pay_with_points: Annotated[bool, _POINTS] = False


class BindPlateBody(
    RootModel[Annotated[FuelPlateBody | NewEnergyPlateBody, Field(discriminator="plate_color")]]
):
    """Bind a plate to the member (again: updates pay_with_points)."""


class Plate(Out):
    plate_number: str
    plate_color: str
    pay_with_points: bool
    bound_at: str = Field(description="RFC 3339, UTC")


class Plates(Out):
    plates: list[Plate]


class AppliedBenefit(Out):
    kind: str = Field(description="tier, spend, coupon, points")
    description: str
    free_minutes: int
    discount_fen: int
    points: int = Field(description="Points spent (points benefits only)")


class Stay(Out):
    """The member's vehicle in a car park now, priced as if it left now (nothing is held)."""

    parked: bool = Field(description="false: none of the member's vehicles is inside")
    session_id: str | None
    car_park_id: str | None
    plate_number: str | None
    entered_at: str | None = Field(description="RFC 3339, UTC")
    parked_minutes: int | None
    fee_so_far_fen: int | None = Field(description="Fee before benefits")
    discount_fen: int | None = Field(description="Benefits applied live")
    payable_fen: int | None = Field(description="Left to pay if it left now")
    benefits: list[AppliedBenefit]
    leave_by: str | None = Field(
        description="Settled before leaving: the exit gate just opens until then (RFC 3339, "
        "UTC); null: not settled"
    )


_REQUEST_ID = Field(
    pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
    description="The app's idempotency key: a retry with it returns the same answer",
)
_ID = Field(pattern=r"^[0-9a-fA-F-]{36}$")


class QuoteBody(Wire):
    """Quote the member's car in the park for leaving now (settling before leaving)."""

    use_points: Annotated[
        bool, Field(description="Buy the hours benefits do not cover with points (held)")
    ] = False
    request_id: Annotated[str, _REQUEST_ID]


class SettleBody(Wire):
    """Settle the stay on the quote, before leaving."""

    session_id: Annotated[str, _ID]
    quote_id: Annotated[str, _ID]
    request_id: Annotated[str, _REQUEST_ID]


class ParkingQuote(Out):
    """The exit gate's price of the stay if the car left now, with the benefits applied."""

    session_id: str
    car_park_id: str
    plate_number: str
    entered_at: str = Field(description="RFC 3339, UTC")
    quote_id: str = Field(description="Name it in POST /v1/me/parking/settle")
    parked_minutes: int
    fee_fen: int = Field(description="Fee before benefits")
    discount_fen: int
    payable_fen: int = Field(
        description="Money left to pay; only 0 can be settled here (pay the rest at the exit)"
    )
    points: int = Field(description="Points the quote spends (held until settled or expired)")
    benefits: list[AppliedBenefit]
    valid_until: str = Field(description="Settle before then (RFC 3339, UTC)")


class ParkingSettlement(ParkingQuote):
    """The stay settled before leaving: the exit gate opens without payment until leave_by."""

    settled_at: str = Field(description="RFC 3339, UTC")
    leave_by: str = Field(
        description="Leave before then and the gate just opens; later, the extra time is "
        "charged at the exit (RFC 3339, UTC)"
    )
