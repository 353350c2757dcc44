"""member's own ops commands (``python -m member <command>``):

- ``review-tiers [MALL_ID ...]``
- ``set-join-policy MALL_ID always|authorized [WINDOW_DAYS]``
- ``set-tier-benefits MALL_ID TIER [CODE=TITLE[:DESCRIPTION] ...]``
- ``evaluate-tag-rules`` (the relay role also does it every ``TAG_RULES_INTERVAL_S``)
- ``list-merges MALL_ID [LIMIT]`` (the merge audit trail, JSON lines)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
from eventbus.service import Extras
from kit.cli import Command

from member.adapters import merges, repository
from member.domain.benefits import parse_benefit
from member.domain.joining import JoinOnPayment, JoinPolicy
from member.entrypoints.tag_jobs import tag_rule_commands, tag_rules_job
from member.service_layer import joining, tiers


def ops_extras(pool: asyncpg.Pool, tag_rules_interval_s: float = 3600.0) -> Extras:
    return Extras(
        components={"relay": [tag_rules_job(pool, tag_rules_interval_s)]},
        commands=tier_commands(pool) | tag_rule_commands(pool),
    )


def tier_commands(pool: asyncpg.Pool) -> dict[str, Command]:
    async def review(args: Sequence[str]) -> int:
        """Review every named mall (all malls when none is named), one transaction each."""
        now = datetime.now(UTC)
        async with pool.acquire() as conn:
            mall_ids = list(args) or [m.mall_id for m in await repository.list_malls(conn)]
            for mall_id in mall_ids:
                async with conn.transaction():
                    changed = await tiers.review_tiers(conn, mall_id, now)
                sys.stdout.write(json.dumps({"mall_id": mall_id, "changed": len(changed)}) + "\n")
        return 0

    async def set_policy(args: Sequence[str]) -> int:
        choices = [p.value for p in JoinOnPayment]
        if (
            len(args) not in (2, 3)
            or args[1] not in choices
            or not all(a.isdigit() for a in args[2:])
        ):
            sys.stderr.write(f"usage: set-join-policy MALL_ID {'|'.join(choices)} [DAYS]\n")
            return 2
        policy = JoinPolicy(JoinOnPayment(args[1]), int(args[2]) if len(args) == 3 else 7)
        async with pool.acquire() as conn, conn.transaction():
            await joining.set_join_policy(conn, args[0], policy)
        sys.stdout.write(f"{args[0]}: {policy.join_on_payment} ({policy.window_days} days)\n")
        return 0

    async def set_benefits(args: Sequence[str]) -> int:
        if len(args) < 2:
            sys.stderr.write("usage: set-tier-benefits MALL_ID TIER [CODE=TITLE[:DESC] ...]\n")
            return 2
        lines = [parse_benefit(a) for a in args[2:]]
        async with pool.acquire() as conn, conn.transaction():
            await tiers.set_tier_benefits(conn, args[0], args[1], lines)
        sys.stdout.write(f"{args[0]} {args[1]}: {len(lines)} benefits\n")
        return 0

    async def list_merges(args: Sequence[str]) -> int:
        """One JSON line per merge of the mall, newest first (the audit trail)."""
        if len(args) not in (1, 2) or not all(a.isdigit() for a in args[1:]):
            sys.stderr.write("usage: list-merges MALL_ID [LIMIT]\n")
            return 2
        async with pool.acquire() as conn:
            rows = await merges.audit(conn, args[0], int(args[1]) if len(args) == 2 else 100)
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0

    return {
        "list-merges": list_merges,
        "review-tiers": review,
        "set-join-policy": set_policy,
        "set-tier-benefits": set_benefits,
    }
