"""Attribute captured payments to members (支付即会员) and tell the rest of the mall."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from eventbus.outbox import OutgoingEvent, add_events
from kit.db import Connection
from kit.errors import NotFound

from member.adapters import events, repository
from member.domain.model import Attribution, CapturedPayment, JoinChannel

log = structlog.get_logger(__name__)


async def attribute_payments(
    conn: Connection, payments: Sequence[tuple[CapturedPayment, dict[str, str]]]
) -> list[Attribution]:
    """Inside the caller's transaction: join payers, record payments, queue events.

    An unknown mall or shop raises NotFound, a permanent refusal: the message is
    dead-lettered and can be replayed once ops have onboarded the store.
    """
    outgoing: list[OutgoingEvent] = []
    done: list[Attribution] = []
    for payment, headers in payments:
        mall_id = await repository.mall_id_for_appid(conn, payment.appid)
        if mall_id is None:
            raise NotFound("unknown_mall", f"no mall has appid {payment.appid}")
        store = await repository.find_store(conn, mall_id, payment.shop_number)
        if store is None:
            raise NotFound(
                "unknown_shop", f"mall {mall_id} has no store with shop {payment.shop_number}"
            )
        member = await repository.join_by_identity(
            conn, mall_id, "openid", payment.openid, JoinChannel.PAYMENT
        )
        attribution = Attribution(payment=payment, store=store, member=member)
        if not await repository.record_payment(conn, attribution):
            log.info("payment_already_attributed", transaction_id=payment.transaction_id)
            continue
        if member.joined_now:
            outgoing.append(events.member_joined(attribution, JoinChannel.PAYMENT, headers))
        outgoing.append(events.payment_attributed(attribution, headers))
        done.append(attribution)
    await add_events(conn, outgoing)
    return done
