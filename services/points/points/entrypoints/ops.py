"""Ops commands for the points sync to WeChat Pay.

* ``wechat-sync [TRANSACTION_ID]``: counts per state, then the rows not yet SENT (or the
  payment's rows, whatever their state).
* ``wechat-sync-retry MALL_ID TRANSACTION_ID [credit|reversal]``: send a FAILED report again.
* ``wechat-sync-retry --code ERROR_CODE``: send again every FAILED report refused with that
  code (after fixing what they all hit, e.g. ``SIGN_ERROR`` from a wrong merchant key).

Output is JSON lines (like ``dead-letters``): first the counts per state, then the rows.
Openids are masked.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from kit.cli import Command
from kit.db import Connection
from kit.logs import mask

from points.adapters import wechat_sync as queue
from points.domain.wechat_sync import SyncKind

#: Opens a database connection for one command (the composition root decides how).
Connect = Callable[[], AbstractAsyncContextManager[Connection]]


def _line(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value, default=str, ensure_ascii=False) + "\n")


def wechat_sync_commands(connect: Connect) -> dict[str, Command]:
    async def show(args: Sequence[str]) -> int:
        if len(args) > 1:
            sys.stderr.write("usage: wechat-sync [TRANSACTION_ID]\n")
            return 2
        transaction_id = args[0] if args else None
        async with connect() as conn:
            counts = await queue.count_by_state(conn, transaction_id=transaction_id)
            rows = await queue.list_reports(conn, transaction_id=transaction_id)
        _line({"counts": counts} | ({"transaction_id": transaction_id} if args else {}))
        for row in rows:
            _line(row | {"openid": mask(row["openid"])})
        return 0

    async def retry(args: Sequence[str]) -> int:
        kinds = [k.value for k in SyncKind]
        if len(args) == 2 and args[0] == "--code":
            async with connect() as conn:
                count = await queue.requeue_failed_with_code(conn, args[1])
            sys.stdout.write(f"re-queued {count} FAILED report(s) with code {args[1]}\n")
            return 0
        if len(args) not in (2, 3) or (len(args) == 3 and args[2] not in kinds):
            sys.stderr.write(
                "usage: wechat-sync-retry MALL_ID TRANSACTION_ID [credit|reversal]\n"
                "       wechat-sync-retry --code ERROR_CODE\n"
            )
            return 2
        kind = SyncKind(args[2]) if len(args) == 3 else SyncKind.CREDIT
        async with connect() as conn:
            requeued = await queue.requeue_failed(conn, args[0], args[1], kind)
        if not requeued:
            sys.stderr.write(f"no FAILED {kind.value} report for {args[0]} {args[1]}\n")
            return 1
        sys.stdout.write(f"re-queued {args[0]} {args[1]} {kind.value}\n")
        return 0

    return {"wechat-sync": show, "wechat-sync-retry": retry}
