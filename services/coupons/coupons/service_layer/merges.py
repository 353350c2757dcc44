"""Following member merges (member.identity.merged): the absorbed member's coupons, claim keys
and per-member limit counters, commitment cards and card package mirror rows move to the
survivor, in one transaction with the merge's record.

Ordering between services is not guaranteed, so a claim can still name the absorbed member
after the merge was followed here (a post-payment coupon for a payment attributed just before
the merge, a shopper's retry). Claims share-lock their claimants and look for a merge after
the lock (``claims.claim_batch`` makes such a claim for the survivor); the merge locks both
members exclusively. A claim racing the merge thus either commits first and is moved by it, or
waits and lands on the survivor — and the survivor's per-member limit counts both.

Commitment cards (支付分先享卡): the survivor's payments must count on a card the absorbed member
accepted, so its cards are the survivor's now. Payments and checkouts still naming the absorbed
member share-lock it (and its survivor) as claims do and then use the survivor's cards
(``commitment_purchases``: ``count_payments``, ``apply_discount``): one racing the merge counts
before the cards move, or waits and counts on the survivor's. A member has one live card of an
offer: when both hold an active one, the survivor's card takes the other's purchases and applied
discounts, their progress and discounts given add up (a payment counted on both counts once),
and its window spans both (earliest acceptance, latest deadline), so neither side loses what it
earned; reaching the purchases required fulfils it now (announced), and if it fails the clawback
is every discount both gave. The purchases move as the same rows: a refund names no member
(the member locks cannot hold it) but locks the payment's purchases before its cards, as the
fold does, so one racing the fold applies first (and the fold adds up what is left) or waits
and applies to the purchase on the kept card (which, if the fold fulfilled it, was earned and
stays so, as after any payment that fulfils a card). A settled card (fulfilled, or failed with
its clawback) is history and is never folded: it moves as it is, marked ``merged_from`` when
the survivor already holds a card of the offer, as does an active card beside the survivor's
settled one, which runs on to its own deadline. Clawbacks move with their cards; each keeps
the pay-score identity (appid, openid) of whoever accepted the card.

Card package (卡包): ``card_package_payers`` is who a member is at WeChat, used to send a coupon;
``card_package_coupons.member_id`` is whose identity a coupon goes to. The absorbed member's
mirrored coupons move to the survivor as its coupons did; each already sent (or tried) keeps the
identity it went to (pinned: later use/return calls name the openid that holds it, nothing is
sent again); those not sent yet go to the survivor's identity, which is the absorbed member's if
the survivor had none. The absorbed member's identity is kept for coupon events still naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from eventbus.outbox import add_events
from kit.db import Connection

from coupons.adapters import card_package_merges, commitment_events, commitment_merges, merges
from coupons.adapters import commitment_repository as cards

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class MemberMerged:
    mall_id: str
    survivor_member_id: str
    merged_member_id: str
    merge_request_id: str


async def follow_merges(conn: Connection, merged: Sequence[MemberMerged]) -> int:
    """Inside the caller's transaction: record each merge and move the absorbed member's
    coupons, commitment cards and card package rows; how many coupons moved (0 for a merge
    seen before)."""
    todo = [m for m in merged if m.merged_member_id != m.survivor_member_id]
    if not todo:
        return 0
    await merges.lock_for_merge(
        conn, [(m.mall_id, m.merged_member_id, m.survivor_member_id) for m in todo]
    )
    total = 0
    for m in todo:
        await merges.record_merge(
            conn, m.mall_id, m.merged_member_id, m.survivor_member_id, m.merge_request_id
        )
        moved = await merges.move_member(conn, m.mall_id, m.merged_member_id, m.survivor_member_id)
        total += moved
        moved_cards = await commitment_merges.move_commitment_cards(
            conn, m.mall_id, m.merged_member_id, m.survivor_member_id
        )
        fulfilled = []
        for card_id in moved_cards.fulfilled:
            row = await cards.get_card(conn, m.mall_id, card_id)
            assert row is not None
            fulfilled.append(commitment_events.fulfilled(row, row.card.discount_given_fen))
        await add_events(conn, fulfilled)
        mirrored = await card_package_merges.move_card_package(
            conn, m.mall_id, m.merged_member_id, m.survivor_member_id
        )
        log.info(
            "member_merge_followed",
            mall_id=m.mall_id,
            survivor_member_id=m.survivor_member_id,
            merged_member_id=m.merged_member_id,
            moved_coupons=moved,
            moved_commitment_cards=moved_cards.moved,
            folded_commitment_cards=moved_cards.folded,
            fulfilled_commitment_cards=len(fulfilled),
            moved_card_package_coupons=mirrored,
        )
    return total
