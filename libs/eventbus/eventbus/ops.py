"""Ops commands every service with consumers gets: list and replay dead letters."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import asyncpg
from kit.cli import Command

from eventbus.consumer import Consumer, list_dead_letters


def dead_letter_commands(pool: asyncpg.Pool, consumers: Sequence[Consumer]) -> dict[str, Command]:
    by_name = {c.name: c for c in consumers}

    async def list_(args: Sequence[str]) -> int:
        for row in await list_dead_letters(pool, args[0] if args else None):
            sys.stdout.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        return 0

    async def replay(args: Sequence[str]) -> int:
        if len(args) != 2 or args[0] not in by_name or not args[1].isdigit():
            sys.stderr.write(
                f"usage: dead-letters-replay CONSUMER ID  (consumers: {sorted(by_name)})\n"
            )
            return 2
        await by_name[args[0]].replay(int(args[1]))
        sys.stdout.write(f"replayed {args[1]}\n")
        return 0

    return {"dead-letters": list_, "dead-letters-replay": replay}
