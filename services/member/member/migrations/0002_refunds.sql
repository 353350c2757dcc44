-- Refunds the platform reported, per payment. A refund that arrives before its payment is
-- parked (member_id NULL) and attributed when the payment lands.
CREATE TABLE refunds (
    mall_id           text NOT NULL,
    refund_id         text NOT NULL,
    transaction_id    text NOT NULL,
    refund_amount_fen bigint NOT NULL CHECK (refund_amount_fen > 0),
    refunded_at       timestamptz NOT NULL,
    appid             text NOT NULL,
    openid            text NOT NULL,
    state             text NOT NULL CHECK (state IN ('parked', 'attributed')),
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, refund_id)
);
CREATE INDEX refunds_payment ON refunds (mall_id, transaction_id);
