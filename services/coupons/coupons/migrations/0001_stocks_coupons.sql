-- Stocks: a batch of coupons a tenant (or the mall: tenant_id = '') offers. Terms never change
-- after creation; only status and the claimed counter move.
CREATE TABLE stocks (
    mall_id          text NOT NULL,
    stock_id         text NOT NULL,
    tenant_id        text NOT NULL DEFAULT '',
    title            text NOT NULL,
    description      text NOT NULL DEFAULT '',
    kind             text NOT NULL CHECK (kind IN ('fixed_amount', 'percent_off', 'exchange',
                                                   'parking')),
    discount_fen     bigint NOT NULL DEFAULT 0 CHECK (discount_fen >= 0),
    threshold_fen    bigint NOT NULL DEFAULT 0 CHECK (threshold_fen >= 0),
    percent_off      integer NOT NULL DEFAULT 0 CHECK (percent_off BETWEEN 0 AND 99),
    max_discount_fen bigint NOT NULL DEFAULT 0 CHECK (max_discount_fen >= 0),
    parking_minutes  integer NOT NULL DEFAULT 0 CHECK (parking_minutes >= 0),
    max_coupons      bigint NOT NULL CHECK (max_coupons > 0),
    budget_fen       bigint NOT NULL DEFAULT 0 CHECK (budget_fen >= 0),
    -- min(max_coupons, budget / face value): the number the claimed counter may reach.
    issuable         bigint NOT NULL CHECK (issuable >= 0),
    max_per_member   integer NOT NULL DEFAULT 0 CHECK (max_per_member >= 0),
    max_per_day      integer NOT NULL DEFAULT 0 CHECK (max_per_day >= 0),
    store_ids        text[] NOT NULL DEFAULT '{}',
    tenant_ids       text[] NOT NULL DEFAULT '{}',
    audience_tiers   text[] NOT NULL DEFAULT '{}',
    audience_tags    text[] NOT NULL DEFAULT '{}',
    claim_starts_at  timestamptz NOT NULL,
    claim_ends_at    timestamptz NOT NULL,
    valid_from       timestamptz,
    valid_until      timestamptz,
    valid_days       integer NOT NULL DEFAULT 0 CHECK (valid_days >= 0),
    points_price     bigint NOT NULL DEFAULT 0 CHECK (points_price >= 0),
    paused           boolean NOT NULL DEFAULT false,
    -- The flash-grab counter: moved once per batch (UPDATE ... RETURNING), never per claim.
    claimed          bigint NOT NULL DEFAULT 0 CHECK (claimed >= 0 AND claimed <= issuable),
    request_id       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, stock_id),
    UNIQUE (mall_id, tenant_id, request_id),
    CHECK (claim_ends_at > claim_starts_at),
    CHECK ((valid_days > 0) <> (valid_until IS NOT NULL))
);
CREATE INDEX stocks_by_tenant ON stocks (mall_id, tenant_id, created_at DESC);

-- Coupons issued on a given day (mall time zone) when the stock has a daily limit.
CREATE TABLE stock_days (
    mall_id  text NOT NULL,
    stock_id text NOT NULL,
    day      date NOT NULL,
    claimed  integer NOT NULL DEFAULT 0 CHECK (claimed >= 0),
    PRIMARY KEY (mall_id, stock_id, day),
    FOREIGN KEY (mall_id, stock_id) REFERENCES stocks
);

-- Coupons a member holds of a stock with a per-member limit (checked under a row lock).
CREATE TABLE member_claims (
    mall_id      text NOT NULL,
    stock_id     text NOT NULL,
    member_id    uuid NOT NULL,
    claimed      integer NOT NULL DEFAULT 0 CHECK (claimed >= 0),
    last_granted integer NOT NULL DEFAULT 0,
    PRIMARY KEY (mall_id, stock_id, member_id),
    FOREIGN KEY (mall_id, stock_id) REFERENCES stocks
);

-- Codes printed on package cards or guides' badges.
CREATE TABLE claim_codes (
    mall_id    text NOT NULL,
    code       text NOT NULL,
    stock_id   text NOT NULL,
    channel    text NOT NULL CHECK (channel IN ('package_card', 'guide')),
    guide_id   text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, code),
    FOREIGN KEY (mall_id, stock_id) REFERENCES stocks
);

-- One coupon held by a member. Terms are the stock's (immutable), joined when needed.
CREATE TABLE coupons (
    mall_id           text NOT NULL,
    coupon_id         text NOT NULL,
    stock_id          text NOT NULL,
    tenant_id         text NOT NULL DEFAULT '',
    member_id         uuid NOT NULL,
    status            text NOT NULL DEFAULT 'available'
                      CHECK (status IN ('available', 'used', 'expired', 'revoked')),
    channel           text NOT NULL CHECK (channel IN ('mini_program', 'post_payment', 'points',
                                                       'ops', 'package_card', 'guide')),
    guide_id          text NOT NULL DEFAULT '',
    claim_code        text NOT NULL DEFAULT '',
    -- Claim idempotency key, unique per member.
    request_id        text NOT NULL,
    -- POST_PAYMENT: the payment (and rule) that earned it; POINTS: the points hold.
    transaction_id    text NOT NULL DEFAULT '',
    rule_id           text NOT NULL DEFAULT '',
    points_hold_id    text NOT NULL DEFAULT '',
    claimed_at        timestamptz NOT NULL DEFAULT now(),
    valid_from        timestamptz NOT NULL,
    valid_until       timestamptz NOT NULL,
    -- Redemption (核销).
    redeemed_at       timestamptz,
    redeemed_store_id text NOT NULL DEFAULT '',
    use_request_id    text,
    order_amount_fen  bigint NOT NULL DEFAULT 0,
    discount_fen      bigint NOT NULL DEFAULT 0,
    order_transaction_id text NOT NULL DEFAULT '',
    -- Revocation.
    revoked_at        timestamptz,
    revoked_reason    text NOT NULL DEFAULT '',
    PRIMARY KEY (mall_id, coupon_id),
    FOREIGN KEY (mall_id, stock_id) REFERENCES stocks,
    UNIQUE (mall_id, member_id, request_id)
);
CREATE INDEX coupons_wallet ON coupons (mall_id, member_id, claimed_at DESC, coupon_id);
CREATE INDEX coupons_by_stock ON coupons (mall_id, stock_id, channel, guide_id);
CREATE INDEX coupons_by_payment ON coupons (mall_id, transaction_id) WHERE transaction_id <> '';
CREATE INDEX coupons_by_order ON coupons (mall_id, order_transaction_id)
    WHERE order_transaction_id <> '';
CREATE INDEX coupons_valid_until ON coupons (mall_id, valid_until) WHERE status = 'available';

-- Post-payment rules (支付后有礼): a payment at one of tenant_ids of at least min_amount_fen
-- issues a coupon of stock_id.
CREATE TABLE post_payment_rules (
    mall_id        text NOT NULL,
    rule_id        text NOT NULL,
    stock_id       text NOT NULL,
    owner_tenant   text NOT NULL DEFAULT '',
    min_amount_fen bigint NOT NULL CHECK (min_amount_fen >= 0),
    tenant_ids     text[] NOT NULL DEFAULT '{}',
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz,
    enabled        boolean NOT NULL,
    version        bigint NOT NULL DEFAULT 1,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, rule_id),
    FOREIGN KEY (mall_id, stock_id) REFERENCES stocks
);

-- Refunds seen (member.refund.attributed), so a payment refunded before its attribution
-- arrives issues nothing, and partial refunds add up to a full one.
CREATE TABLE refunds (
    mall_id           text NOT NULL,
    refund_id         text NOT NULL,
    transaction_id    text NOT NULL,
    refund_amount_fen bigint NOT NULL,
    pay_amount_fen    bigint NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, refund_id)
);
CREATE INDEX refunds_by_payment ON refunds (mall_id, transaction_id);
