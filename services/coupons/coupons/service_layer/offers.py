"""What tenants and ops set up: stocks, post-payment rules, claim codes; and a stock's figures.

A tenant caller acts on its own stocks only, scoped to its own stores; cross-brand stocks and
stocks for any tenant are the mall's (ops, no credential).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from kit.db import Connection
from kit.errors import Conflict, Forbidden, InvalidInput, NotFound

from coupons.adapters import coupons as coupons_sql
from coupons.adapters import rules as rules_sql
from coupons.adapters import stocks as stocks_sql
from coupons.adapters.coupons import Figures
from coupons.adapters.rules import Code
from coupons.domain.post_payment import Rule
from coupons.domain.stocks import NewStock, Stock, validate

#: (mall_id, store_id) → the store's tenant, or None when the directory has no such store.
StoreTenant = Callable[[str, str], str | None]
#: A tenant caller as (mall_id, tenant_id); None for ops.
Caller = tuple[str, str] | None


def _own_mall(caller: Caller, mall_id: str) -> None:
    if caller is not None and caller[0] != mall_id:
        raise Forbidden("mall_not_yours", f"the credential is not for mall {mall_id}")


async def create_stock(
    conn: Connection, new: NewStock, caller: Caller, store_tenant: StoreTenant
) -> tuple[Stock, bool]:
    validate(new)
    _own_mall(caller, new.mall_id)
    if caller is not None:
        tenant_id = caller[1]
        if new.tenant_id and new.tenant_id != tenant_id:
            raise Forbidden("tenant_not_yours", "a tenant creates stocks for itself only")
        if set(new.terms.tenant_ids) - {tenant_id}:
            raise Forbidden("cross_brand_needs_mall", "cross-brand stocks are the mall's")
        for store_id in new.terms.store_ids:
            if store_tenant(new.mall_id, store_id) != tenant_id:
                raise Forbidden("store_not_yours", f"store {store_id} is not a store of yours")
        new = replace(new, tenant_id=tenant_id)
    return await stocks_sql.create(conn, new)


async def owned_stock(conn: Connection, mall_id: str, stock_id: str, caller: Caller) -> Stock:
    _own_mall(caller, mall_id)
    stock = await stocks_sql.get(conn, mall_id, stock_id)
    if stock is None or (caller is not None and stock.tenant_id != caller[1]):
        raise NotFound("stock_not_found", f"no stock {stock_id} of yours")
    return stock


async def put_rule(conn: Connection, rule: Rule, caller: Caller) -> Rule:
    stock = await owned_stock(conn, rule.mall_id, rule.stock_id, caller)
    owner = caller[1] if caller is not None else ""
    existing = await rules_sql.rule_owner(conn, rule.mall_id, rule.rule_id)
    if existing is not None and existing != owner:
        raise Forbidden("rule_not_yours", f"rule {rule.rule_id} belongs to another owner")
    stored = await rules_sql.put_rule(
        conn,
        replace(rule, owner_tenant=owner, stock_tenant=stock.tenant_id),
    )
    if stored is None:
        raise Forbidden("rule_not_yours", f"rule {rule.rule_id} belongs to another owner")
    return stored


async def create_code(conn: Connection, code: Code, caller: Caller) -> Code:
    if not code.code or len(code.code) > 64:
        raise InvalidInput("invalid_code", "code: 1..64 characters")
    if code.channel not in ("package_card", "guide"):
        raise InvalidInput("invalid_channel", "channel must be PACKAGE_CARD or GUIDE")
    if (code.channel == "guide") != bool(code.guide_id):
        raise InvalidInput("invalid_guide", "a GUIDE code names its guide; others name none")
    await owned_stock(conn, code.mall_id, code.stock_id, caller)
    created = await rules_sql.create_code(conn, code)
    if created is None:
        raise Conflict("code_taken", f"code {code.code} is already used for another stock")
    return created


@dataclass(frozen=True)
class StockFigures:
    claimed: int
    redeemed: int
    by_channel: list[Figures]

    @property
    def redemption_rate_bp(self) -> int:
        return self.redeemed * 10_000 // self.claimed if self.claimed else 0


async def figures(conn: Connection, mall_id: str, stock_id: str, caller: Caller) -> StockFigures:
    await owned_stock(conn, mall_id, stock_id, caller)
    rows = await coupons_sql.figures(conn, mall_id, stock_id)
    return StockFigures(
        claimed=sum(r.claimed for r in rows),
        redeemed=sum(r.redeemed for r in rows),
        by_channel=rows,
    )
