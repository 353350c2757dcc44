"""SQL for following member merges in the card package mirror: the absorbed member's mirrored
coupons and WeChat identity go to the survivor (what it means: ``service_layer.merges``).
"""

from __future__ import annotations

import uuid

from kit.db import Connection


async def move_card_package(conn: Connection, mall_id: str, merged: str, survivor: str) -> int:
    """Move the merged member's mirrored coupons to the survivor, each the platform may hold
    already pinned to the WeChat identity it went to; the survivor takes the merged member's
    identity when it has none. The number of coupons moved (0 on a repeat)."""
    merged, survivor = str(uuid.UUID(merged)), str(uuid.UUID(survivor))
    # Coupons sent (or tried: the answer may have been lost) before pinning existed.
    await conn.execute(
        """UPDATE card_package_coupons c SET appid = p.appid, openid = p.openid
             FROM card_package_payers p
            WHERE c.mall_id = $1 AND c.member_id = $2 AND c.openid = ''
              AND (c.platform <> 'none' OR c.attempts > 0)
              AND p.mall_id = $1 AND p.member_id = $2""",
        mall_id,
        merged,
    )
    # The merged member's identity stays too: a coupon event still naming it (its stream
    # lags the merge's) is mirrored to that identity rather than waiting for one forever.
    await conn.execute(
        """INSERT INTO card_package_payers (mall_id, member_id, appid, openid, updated_at)
           SELECT mall_id, $3, appid, openid, updated_at FROM card_package_payers
            WHERE mall_id = $1 AND member_id = $2
           ON CONFLICT (mall_id, member_id) DO NOTHING""",
        mall_id,
        merged,
        survivor,
    )
    status = await conn.execute(
        "UPDATE card_package_coupons SET member_id = $3 WHERE mall_id = $1 AND member_id = $2",
        mall_id,
        merged,
        survivor,
    )
    return int(status.rsplit(" ", 1)[-1])
