"""Ops commands for the malls' points policies.

* ``set-balance-policy MALL_ID allow|debt``: what a refund, redemption or expiry does when the
  balance cannot cover it (``points.domain.debt``).
* ``set-expiry-policy MALL_ID end_of_next_year|days:N|default``: when the lots of the mall's
  new credits expire (``points.domain.expiry``); ``default`` goes back to the service's
  POINTS_EXPIRY_POLICY setting.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kit.cli import Command
from kit.errors import InvalidInput

from points.domain.debt import NegativeBalance
from points.entrypoints.ops import Connect
from points.service_layer.policies import set_balance_policy, set_expiry_policy

USAGE = "usage: set-balance-policy MALL_ID allow|debt\n"
EXPIRY_USAGE = "usage: set-expiry-policy MALL_ID end_of_next_year|days:N|default\n"


def policy_commands(connect: Connect) -> dict[str, Command]:
    async def set_policy(args: Sequence[str]) -> int:
        if len(args) != 2 or args[1] not in {p.value for p in NegativeBalance}:
            sys.stderr.write(USAGE)
            return 2
        try:
            async with connect() as conn:
                policy = await set_balance_policy(conn, args[0], args[1])
        except InvalidInput as error:
            sys.stderr.write(f"{error}\n{USAGE}")
            return 2
        sys.stdout.write(f"{args[0]}: negative balance policy is now {policy.value}\n")
        return 0

    async def set_expiry(args: Sequence[str]) -> int:
        if len(args) != 2:
            sys.stderr.write(EXPIRY_USAGE)
            return 2
        try:
            async with connect() as conn:
                policy = await set_expiry_policy(conn, args[0], args[1])
        except InvalidInput as error:
            sys.stderr.write(f"{error}\n{EXPIRY_USAGE}")
            return 2
        shown = "the service default" if policy is None else args[1]
        sys.stdout.write(f"{args[0]}: expiry policy is now {shown}\n")
        return 0

    return {"set-balance-policy": set_policy, "set-expiry-policy": set_expiry}
