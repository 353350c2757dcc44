-- A refunded purchase stops counting on a commitment card that is still active (with the
-- discount it got): refunds seen (member.refund.attributed, possibly before their payment)
-- and what each counted purchase has had refunded.
CREATE TABLE commitment_refunds (
    mall_id        text NOT NULL,
    refund_id      text NOT NULL,
    transaction_id text NOT NULL,
    amount_fen     bigint NOT NULL CHECK (amount_fen >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, refund_id)
);
CREATE INDEX commitment_refunds_by_payment ON commitment_refunds (mall_id, transaction_id);

ALTER TABLE commitment_purchases ADD COLUMN refunded_fen bigint NOT NULL DEFAULT 0;
ALTER TABLE commitment_purchases ADD COLUMN voided_at timestamptz;
CREATE INDEX commitment_purchases_by_payment ON commitment_purchases (mall_id, transaction_id);
