-- What each refund took back: the refunded amount and the points reversed for it. Partial
-- refunds reverse in proportion; the running totals here make the last one exact.
CREATE TABLE refund_reversals (
    mall_id           text NOT NULL,
    refund_id         text NOT NULL,
    transaction_id    text NOT NULL,
    member_id         uuid NOT NULL,
    refund_amount_fen bigint NOT NULL CHECK (refund_amount_fen > 0),
    pay_amount_fen    bigint NOT NULL CHECK (pay_amount_fen > 0),
    points            bigint NOT NULL CHECK (points >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, refund_id)
);
CREATE INDEX refund_reversals_payment ON refund_reversals (mall_id, transaction_id);
