"""Ops commands (``python -m parking <command>``), output as JSON lines.

* ``plate-history MALL_ID PLATE``: every bind, update, unbind, refused takeover and merge move
  of a plate, oldest first.
* ``wechat-calls-retry MALL_ID SESSION_ID KIND``: send a FAILED WeChat Pay call again
  (state_in, state_out, pay_score_entry or pay_score_deduction), after fixing its cause.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from kit.cli import Command
from kit.db import Connection

from parking.domain.plates import normalise

#: Opens a database connection for one command (the composition root decides how).
Connect = Callable[[], AbstractAsyncContextManager[Connection]]
KINDS = ("state_in", "state_out", "pay_score_entry", "pay_score_deduction")


def _line(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value, default=str, ensure_ascii=False) + "\n")


def ops_commands(connect: Connect) -> dict[str, Command]:
    async def plate_history(args: Sequence[str]) -> int:
        if len(args) != 2:
            sys.stderr.write("usage: plate-history MALL_ID PLATE\n")
            return 2
        async with connect() as conn:
            rows = await conn.fetch(
                """SELECT at, member_id, action, holder_member_id FROM plate_audit
                    WHERE mall_id = $1 AND plate_number = $2 ORDER BY id""",
                args[0],
                normalise(args[1]),
            )
        for row in rows:
            _line(dict(row))
        return 0

    async def retry(args: Sequence[str]) -> int:
        if len(args) != 3 or args[2] not in KINDS:
            sys.stderr.write(f"usage: wechat-calls-retry MALL_ID SESSION_ID {'|'.join(KINDS)}\n")
            return 2
        async with connect() as conn:
            result = await conn.execute(
                """UPDATE wechat_calls SET state = 'pending', next_at = now(), last_error = ''
                    WHERE mall_id = $1 AND session_id::text = $2 AND kind = $3
                      AND state = 'failed'""",
                *args,
            )
        if result.endswith(" 0"):
            sys.stderr.write(f"no FAILED {args[2]} call for session {args[1]}\n")
            return 1
        _line({"requeued": args[2], "session_id": args[1]})
        return 0

    return {"plate-history": plate_history, "wechat-calls-retry": retry}
