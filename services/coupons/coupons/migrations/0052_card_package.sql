-- WeChat card package (卡包): stocks flagged for it are mirrored as platform merchant coupons
-- (商家券). The mall's own stocks and coupons stay the book of record; these tables hold the
-- mirror's state, and work on them as an outbox: a worker brings the platform in line with
-- what the mall wants, with retries and backoff, never blocking a claim.

CREATE TABLE card_package_stocks (
    mall_id           text NOT NULL,
    stock_id          text NOT NULL,
    -- The platform's stock request, built when the stock was flagged (terms never change).
    request           jsonb NOT NULL,
    out_request_no    text NOT NULL UNIQUE,
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'created', 'refused')),
    platform_stock_id text NOT NULL DEFAULT '',
    attempts          integer NOT NULL DEFAULT 0,
    failures          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_error_code   text NOT NULL DEFAULT '',
    last_error        text NOT NULL DEFAULT '',
    flagged_at        timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz,
    PRIMARY KEY (mall_id, stock_id)
);
CREATE INDEX card_package_stocks_due ON card_package_stocks (next_attempt_at)
    WHERE state = 'pending';

-- Who a member is at WeChat (appid, openid), learnt from their WeChat Pay payments: a coupon
-- can only be sent to a shopper the platform knows.
CREATE TABLE card_package_payers (
    mall_id    text NOT NULL,
    member_id  text NOT NULL,
    appid      text NOT NULL,
    openid     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, member_id)
);

-- One mirrored coupon: what the mall wants the platform to show (sent, used, deactivated) and
-- what the platform has confirmed ('none' until sent).
CREATE TABLE card_package_coupons (
    mall_id         text NOT NULL,
    coupon_id       text NOT NULL,
    stock_id        text NOT NULL,
    member_id       text NOT NULL,
    coupon_code     text NOT NULL,
    wanted          text NOT NULL CHECK (wanted IN ('sent', 'used', 'deactivated')),
    platform        text NOT NULL DEFAULT 'none'
                    CHECK (platform IN ('none', 'sent', 'used', 'deactivated')),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'synced', 'refused')),
    use_time        timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    failures        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error_code text NOT NULL DEFAULT '',
    last_error      text NOT NULL DEFAULT '',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, coupon_id),
    FOREIGN KEY (mall_id, stock_id) REFERENCES card_package_stocks (mall_id, stock_id)
);
CREATE INDEX card_package_coupons_due ON card_package_coupons (next_attempt_at)
    WHERE status = 'pending';
