-- Per-member per-day claim limit (optional, beside the stock-wide daily cap max_per_day):
-- coupons one member may claim of a stock on one mall day (Asia/Shanghai); 0 for none.
ALTER TABLE stocks ADD COLUMN max_per_member_per_day integer NOT NULL DEFAULT 0
    CHECK (max_per_member_per_day >= 0);

-- Coupons a member claimed of a stock on a day, when the stock has that limit (row-locked).
CREATE TABLE member_days (
    mall_id   text NOT NULL,
    stock_id  text NOT NULL,
    member_id uuid NOT NULL,
    day       date NOT NULL,
    claimed   integer NOT NULL DEFAULT 0 CHECK (claimed >= 0),
    PRIMARY KEY (mall_id, stock_id, member_id, day),
    FOREIGN KEY (mall_id, stock_id) REFERENCES stocks
);
CREATE INDEX member_days_by_member ON member_days (mall_id, member_id);
