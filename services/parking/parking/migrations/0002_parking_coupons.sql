-- Parking-hour coupons (停车券) members hold, learnt from coupons.coupon.claimed / revoked.
-- A coupon is used by the session that settles with it, once.
CREATE TABLE member_coupons (
    mall_id          text NOT NULL,
    coupon_id        text NOT NULL,
    member_id        text NOT NULL,
    minutes          integer NOT NULL,
    valid_from       timestamptz,
    valid_until      timestamptz,
    revoked          boolean NOT NULL DEFAULT false,
    used_session_id  uuid,
    used_at          timestamptz,
    PRIMARY KEY (mall_id, coupon_id)
);
CREATE INDEX member_coupons_usable ON member_coupons (mall_id, member_id)
    WHERE used_session_id IS NULL AND NOT revoked;
