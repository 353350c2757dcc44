-- One account per member per mall; balance is kept in step with the ledger in the same
-- transaction as every entry.
CREATE TABLE accounts (
    mall_id         text NOT NULL,
    member_id       uuid NOT NULL,
    balance         bigint NOT NULL DEFAULT 0,
    lifetime_earned bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, member_id)
);

-- Append-only ledger: every change of a balance, traceable to its cause.
CREATE TABLE ledger (
    mall_id        text NOT NULL,
    entry_id       bigint GENERATED ALWAYS AS IDENTITY,
    member_id      uuid NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('credit', 'reversal', 'redemption', 'hold',
                                                 'release', 'expiry', 'adjustment')),
    points         bigint NOT NULL,
    balance_after  bigint NOT NULL,
    transaction_id text,
    reference      text NOT NULL DEFAULT '',
    description    text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, entry_id),
    FOREIGN KEY (mall_id, member_id) REFERENCES accounts
);
CREATE INDEX ledger_member ON ledger (mall_id, member_id, entry_id DESC);
-- A payment is credited once, whatever path its event took.
CREATE UNIQUE INDEX ledger_one_credit_per_payment
    ON ledger (mall_id, transaction_id) WHERE kind = 'credit';

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger is append-only: % refused', TG_OP;
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();
