-- What a mall does when a debit (reversal, redemption confirm, expiry) would take a balance
-- below zero: 'allow' it (the default, the behaviour before this migration) or stop at zero
-- and record the shortfall as 'debt', settled first by the member's next credits.
CREATE TABLE mall_policies (
    mall_id          text PRIMARY KEY,
    negative_balance text NOT NULL DEFAULT 'allow' CHECK (negative_balance IN ('allow', 'debt')),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Points the member owes; changed under the account's lock like the balance.
ALTER TABLE accounts ADD COLUMN debt bigint NOT NULL DEFAULT 0 CHECK (debt >= 0);

-- A credit that settles debt is followed by a 'debt_settlement' entry taking those points
-- back, so the credit shows the full points and sum(ledger) = balance still holds.
ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check
    CHECK (kind IN ('credit', 'reversal', 'redemption', 'hold', 'release', 'expiry',
                    'adjustment', 'debt_settlement'));
