-- Joining (支付即会员 only for shoppers who authorised), tiers on rolling 12-month spend, tags.

-- How a mall joins payers. 'always': every payer becomes a member (the default, and what
-- malls created before this migration do); 'authorized': only payers who authorised the
-- mall's points service, others' payments wait in pending_payments for join_window_days.
CREATE TABLE mall_join_policies (
    mall_id          text PRIMARY KEY REFERENCES malls,
    join_on_payment  text NOT NULL DEFAULT 'always'
                     CHECK (join_on_payment IN ('always', 'authorized')),
    join_window_days integer NOT NULL DEFAULT 7 CHECK (join_window_days BETWEEN 0 AND 365),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The shopper's points authorisation (MALL_AUTH.ACTIVATE_CARD), per mall and openid.
CREATE TABLE authorizations (
    mall_id     text NOT NULL REFERENCES malls,
    openid      text NOT NULL,
    authorized  boolean NOT NULL,
    auth_type   text NOT NULL DEFAULT '',
    changed_at  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, openid)
);

-- Payments of shoppers who are neither members nor authorised: recorded, not attributed.
-- A row leaves when its shopper authorises or joins (attributed if within the window).
CREATE TABLE pending_payments (
    mall_id        text NOT NULL,
    transaction_id text NOT NULL,
    openid         text NOT NULL,
    appid          text NOT NULL,
    mchid          text NOT NULL,
    shop_number    text NOT NULL,
    amount_fen     bigint NOT NULL CHECK (amount_fen > 0),
    paid_at        timestamptz NOT NULL,
    event_id       text NOT NULL,
    headers        jsonb NOT NULL DEFAULT '{}',
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, transaction_id)
);
CREATE INDEX pending_payments_shopper ON pending_payments (mall_id, openid, paid_at);

-- Consent to the mall's terms, given when joining in the mini-program.
CREATE TABLE consents (
    mall_id      text NOT NULL,
    member_id    uuid NOT NULL,
    kind         text NOT NULL,
    channel      text NOT NULL,
    consented_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, member_id, kind),
    FOREIGN KEY (mall_id, member_id) REFERENCES members
);

-- Ordered tiers per mall; qualification is rolling 12-month spend.
CREATE TABLE tiers (
    mall_id       text NOT NULL REFERENCES malls,
    tier_code     text NOT NULL CHECK (tier_code ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    name          text NOT NULL,
    rank          integer NOT NULL CHECK (rank >= 0),
    threshold_fen bigint NOT NULL CHECK (threshold_fen >= 0),
    PRIMARY KEY (mall_id, tier_code),
    UNIQUE (mall_id, rank)
);
INSERT INTO tiers (mall_id, tier_code, name, rank, threshold_fen)
SELECT m.mall_id, d.tier_code, d.name, d.rank, d.threshold_fen
  FROM malls m,
       (VALUES ('basic', '普通会员', 0, 0),
               ('silver', '银卡会员', 1, 500000),
               ('gold', '金卡会员', 2, 2000000)) AS d(tier_code, name, rank, threshold_fen);

-- When a member above the lowest tier is next reviewed (downgrades happen only then).
ALTER TABLE members ADD COLUMN tier_review_at timestamptz;
CREATE INDEX members_tier_review ON members (mall_id, tier_review_at)
    WHERE tier_review_at IS NOT NULL;

-- Tags set by ops (source 'manual'); rules may add other sources later.
CREATE TABLE member_tags (
    mall_id   text NOT NULL,
    member_id uuid NOT NULL,
    tag       text NOT NULL CHECK (tag ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    source    text NOT NULL DEFAULT 'manual',
    tagged_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, member_id, tag),
    FOREIGN KEY (mall_id, member_id) REFERENCES members
);
CREATE INDEX member_tags_tag ON member_tags (mall_id, tag, member_id);
