-- Redemptions in two steps: a hold reserves points for a reward another service delivers,
-- then it is confirmed (the points are spent) or released (they are spendable again).
--
-- The ledger stays the book of *balance* changes: a hold changes what is available, not the
-- balance, so holding and releasing write no ledger entry (sum(ledger) = balance always
-- holds); a confirmation writes one 'redemption' entry (reference = hold_id). Availability is
-- computed, not stored: available = balance - sum(points of HELD holds not yet expired).
--
-- An expired hold counts as released at once; its row turns RELEASED (reason 'expired', with
-- its event) the next time the account or the hold is touched. No background job yet.
CREATE TABLE holds (
    mall_id        text NOT NULL,
    hold_id        uuid NOT NULL,
    member_id      uuid NOT NULL,
    points         bigint NOT NULL CHECK (points > 0),
    reward_kind    text NOT NULL CHECK (reward_kind IN ('coupon', 'parking', 'gift')),
    reward_ref     text NOT NULL CHECK (reward_ref <> ''),
    state          text NOT NULL DEFAULT 'HELD'
                   CHECK (state IN ('HELD', 'CONFIRMED', 'RELEASED')),
    expires_at     timestamptz NOT NULL,
    -- The caller's idempotency key: a retried HoldPoints finds its hold here.
    request_id     text NOT NULL CHECK (request_id <> ''),
    -- Set on confirmation: the reward's idempotency key (PointsRedeemed.redemption_id).
    redemption_id  uuid,
    release_reason text CHECK (release_reason IN ('cancelled', 'expired')),
    release_note   text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    settled_at     timestamptz,
    PRIMARY KEY (mall_id, hold_id),
    UNIQUE (mall_id, request_id),
    FOREIGN KEY (mall_id, member_id) REFERENCES accounts,
    CHECK ((state = 'HELD') = (settled_at IS NULL)),
    CHECK ((state = 'CONFIRMED') = (redemption_id IS NOT NULL)),
    CHECK ((state = 'RELEASED') = (release_reason IS NOT NULL))
);
-- What makes an account's points unavailable.
CREATE INDEX holds_open ON holds (mall_id, member_id) WHERE state = 'HELD';
CREATE UNIQUE INDEX holds_redemption ON holds (mall_id, redemption_id)
    WHERE redemption_id IS NOT NULL;

-- Manual adjustments by ops: the audit record and idempotency key of each 'adjustment'
-- ledger entry (whose description is the reason and reference the operator).
CREATE TABLE adjustments (
    mall_id    text NOT NULL,
    request_id text NOT NULL CHECK (request_id <> ''),
    member_id  uuid NOT NULL,
    points     bigint NOT NULL CHECK (points <> 0),
    reason     text NOT NULL CHECK (reason <> ''),
    operator   text NOT NULL CHECK (operator <> ''),
    entry_id   bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, request_id),
    FOREIGN KEY (mall_id, entry_id) REFERENCES ledger (mall_id, entry_id)
);
