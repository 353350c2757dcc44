-- Points are kept in lots: one per credit that gave points, each with its own expiry by the
-- mall's policy. Debits (redemptions, reversals, negative adjustments) take from the lots
-- that expire first, in the same transaction as their ledger entry; the expiry job zeroes
-- what is left of due lots with one 'expiry' entry per member.
--
-- Lots are changed only under the member's account lock (accounts row FOR UPDATE), the lock
-- every use case takes first, so lots and balance move together.
CREATE TABLE lots (
    mall_id          text NOT NULL,
    lot_id           uuid NOT NULL,
    member_id        uuid NOT NULL,
    -- The ledger entry (kind 'credit') that filled the lot.
    source_entry_id  bigint NOT NULL,
    points_initial   bigint NOT NULL CHECK (points_initial > 0),
    points_remaining bigint NOT NULL CHECK (points_remaining BETWEEN 0 AND points_initial),
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Set when the expiry job zeroed the lot ('expiry' entry of that member at that time).
    expired_at       timestamptz,
    PRIMARY KEY (mall_id, lot_id),
    UNIQUE (mall_id, source_entry_id),
    FOREIGN KEY (mall_id, member_id) REFERENCES accounts,
    FOREIGN KEY (mall_id, source_entry_id) REFERENCES ledger (mall_id, entry_id)
);
-- What debits spend from, oldest expiring first.
CREATE INDEX lots_open ON lots (mall_id, member_id, expires_at) WHERE points_remaining > 0;
-- What the expiry job looks for, across malls.
CREATE INDEX lots_due ON lots (expires_at) WHERE points_remaining > 0;
