-- Member merges reach commitment cards and the card package mirror (adapters/merges.py).

-- A settled card moved to a survivor that already holds a card of the offer (or an active one
-- beside the survivor's settled one) stays a card of its own: merged_from names the member it
-- came from. A member's own card of an offer (merged_from '') is still one, what accepting finds.
ALTER TABLE commitment_cards ADD COLUMN merged_from text NOT NULL DEFAULT '';
ALTER TABLE commitment_cards DROP CONSTRAINT commitment_cards_mall_id_offer_id_member_id_key;
ALTER TABLE commitment_cards ADD CONSTRAINT commitment_cards_holder
    UNIQUE (mall_id, offer_id, member_id, merged_from);

-- The WeChat identity a mirrored coupon goes to, pinned when it is first claimed: later calls
-- (use, return) name the openid that holds it at the platform, even once its member's
-- identity changed (a merge, a payment under another appid).
ALTER TABLE card_package_coupons ADD COLUMN appid text NOT NULL DEFAULT '';
ALTER TABLE card_package_coupons ADD COLUMN openid text NOT NULL DEFAULT '';
