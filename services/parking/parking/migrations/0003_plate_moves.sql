-- A merge of two members moves the absorbed member's plates to the survivor: audited as 'moved'.
ALTER TABLE plate_audit DROP CONSTRAINT plate_audit_action_check;
ALTER TABLE plate_audit ADD CONSTRAINT plate_audit_action_check
    CHECK (action IN ('bound', 'updated', 'unbound', 'refused', 'moved'));

-- Who was merged into whom, so facts about an absorbed member that arrive after the merge
-- (a payment event still in flight) land on the survivor too.
CREATE TABLE member_merges (
    mall_id             text NOT NULL,
    merged_member_id    text NOT NULL,
    survivor_member_id  text NOT NULL,
    PRIMARY KEY (mall_id, merged_member_id)
);
