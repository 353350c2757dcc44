-- Parking-hour coupons are used at a car park (parking.session.settled names them), not at a
-- store: the car park and the session are recorded (use_request_id is 'parking:<session>').
ALTER TABLE coupons ADD COLUMN redeemed_car_park_id text NOT NULL DEFAULT '';

-- Member merges followed (member.identity.merged): claims still naming an absorbed member
-- are made for its survivor, and what lands on an absorbed member is moved.
CREATE TABLE member_merges (
    mall_id            text NOT NULL,
    merged_member_id   uuid NOT NULL,
    survivor_member_id uuid NOT NULL,
    merge_request_id   text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, merged_member_id)
);
CREATE INDEX member_merges_by_survivor ON member_merges (mall_id, survivor_member_id);
