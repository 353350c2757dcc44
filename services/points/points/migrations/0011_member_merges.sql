-- Members merged by member (member.identity.merged): where an absorbed member's points went.
-- A payment or refund still naming the absorbed member is booked on the survivor; survivors
-- absorbed later re-point the members merged into them, so one hop always suffices.
CREATE TABLE member_merges (
    mall_id            text NOT NULL,
    merged_member_id   uuid NOT NULL,
    survivor_member_id uuid NOT NULL,
    merge_request_id   text NOT NULL DEFAULT '',
    moved_points       bigint NOT NULL DEFAULT 0,
    merged_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, merged_member_id),
    CHECK (merged_member_id <> survivor_member_id)
);
CREATE INDEX member_merges_survivor ON member_merges (mall_id, survivor_member_id);
