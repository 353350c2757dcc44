"""Ops command for the malls' points policies.

* ``set-balance-policy MALL_ID allow|debt``: what a refund, redemption or expiry does when the
  balance cannot cover it (``points.domain.debt``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kit.cli import Command
from kit.errors import InvalidInput

from points.domain.debt import NegativeBalance
from points.entrypoints.ops import Connect
from points.service_layer.policies import set_balance_policy

USAGE = "usage: set-balance-policy MALL_ID allow|debt\n"


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

    return {"set-balance-policy": set_policy}
