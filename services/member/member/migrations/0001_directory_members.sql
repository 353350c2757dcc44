-- The directory: malls, their tenants and the stores where shoppers pay.
CREATE TABLE malls (
    mall_id    text PRIMARY KEY CHECK (mall_id ~ '^[a-z0-9][a-z0-9-]{1,39}$'),
    name       text NOT NULL,
    appid      text NOT NULL UNIQUE,
    brand_id   text NOT NULL DEFAULT '',
    mchid      text NOT NULL DEFAULT '',
    time_zone  text NOT NULL DEFAULT 'Asia/Shanghai',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    mall_id    text NOT NULL REFERENCES malls,
    tenant_id  text NOT NULL CHECK (tenant_id ~ '^[a-z0-9][a-z0-9-]{1,39}$'),
    name       text NOT NULL,
    category   text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, tenant_id)
);

CREATE TABLE stores (
    mall_id     text NOT NULL,
    store_id    text NOT NULL CHECK (store_id ~ '^[a-z0-9][a-z0-9-]{1,39}$'),
    tenant_id   text NOT NULL,
    name        text NOT NULL,
    mchid       text NOT NULL DEFAULT '',
    sub_mchid   text NOT NULL DEFAULT '',
    shop_number text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, store_id),
    FOREIGN KEY (mall_id, tenant_id) REFERENCES tenants,
    UNIQUE (mall_id, shop_number)
);

-- Members: one per person per mall; identities point at them.
CREATE TABLE members (
    mall_id      text NOT NULL REFERENCES malls,
    member_id    uuid NOT NULL,
    tier_code    text NOT NULL DEFAULT 'basic',
    status       text NOT NULL DEFAULT 'active',
    join_channel text NOT NULL,
    joined_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, member_id)
);

-- The FK is deferred so that a join can claim the identity first (the contested row) and
-- create the member it points at in the same transaction.
CREATE TABLE identities (
    mall_id    text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('openid', 'unionid', 'phone', 'card', 'app_account')),
    value      text NOT NULL,
    member_id  uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, kind, value),
    FOREIGN KEY (mall_id, member_id) REFERENCES members DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX identities_member ON identities (mall_id, member_id);

-- Every payment the mall knows of, attributed to a member: the source of spend and tiers.
CREATE TABLE payments (
    mall_id        text NOT NULL,
    transaction_id text NOT NULL,
    member_id      uuid NOT NULL,
    tenant_id      text NOT NULL,
    store_id       text NOT NULL,
    amount_fen     bigint NOT NULL CHECK (amount_fen > 0),
    source         text NOT NULL,
    paid_at        timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, transaction_id),
    FOREIGN KEY (mall_id, member_id) REFERENCES members
);
CREATE INDEX payments_member ON payments (mall_id, member_id, paid_at DESC);
