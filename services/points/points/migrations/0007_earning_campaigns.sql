-- Earning rules complete: campaigns (multiplier or fixed bonus, with a budget), daily caps per
-- member and rounding. See points.domain.rules for how they combine.
ALTER TABLE earning_rules
    ADD COLUMN multiplier_percent integer NOT NULL DEFAULT 0
        CHECK (multiplier_percent = 0 OR multiplier_percent >= 100),
    ADD COLUMN bonus_points bigint NOT NULL DEFAULT 0 CHECK (bonus_points >= 0),
    ADD COLUMN budget_points bigint NOT NULL DEFAULT 0 CHECK (budget_points >= 0),
    ADD COLUMN daily_cap_points bigint NOT NULL DEFAULT 0 CHECK (daily_cap_points >= 0),
    ADD COLUMN rounding text NOT NULL DEFAULT 'down'
        CHECK (rounding IN ('down', 'half_up', 'up'));

-- What each campaign's budget gave so far (per rule_id, across versions). A crediting
-- transaction locks the row (after the accounts' rows) and adds what it granted, so two
-- transactions never overspend a budget.
CREATE TABLE rule_budgets (
    mall_id      text NOT NULL,
    rule_id      text NOT NULL,
    spent_points bigint NOT NULL DEFAULT 0 CHECK (spent_points >= 0),
    PRIMARY KEY (mall_id, rule_id)
);

-- The mall day (Asia/Shanghai) of the payment a credit is for: the daily cap counts the
-- credits of that day. NULL for credits written before this migration.
ALTER TABLE ledger ADD COLUMN mall_day date;
CREATE INDEX ledger_credits_per_day ON ledger (mall_id, member_id, mall_day)
    WHERE kind = 'credit' AND mall_day IS NOT NULL;
