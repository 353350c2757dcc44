-- Credentials of tenant POS and car-park systems: the secret is shown once and only its
-- self-describing scrypt hash is kept. credential_id is unique across malls because a
-- caller presents it before the mall it speaks for is known.
CREATE TABLE credentials (
    mall_id       text NOT NULL REFERENCES malls,
    credential_id text NOT NULL UNIQUE,
    tenant_id     text,
    car_park_id   text,
    label         text NOT NULL DEFAULT '',
    secret_hash   text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    PRIMARY KEY (mall_id, credential_id),
    FOREIGN KEY (mall_id, tenant_id) REFERENCES tenants,
    CHECK (num_nonnulls(tenant_id, car_park_id) = 1)
);

-- Checkout codes (会员识别) the mini-program shows: kept hashed, short-lived, used once.
CREATE TABLE checkout_codes (
    mall_id       text NOT NULL,
    code_hash     bytea NOT NULL,
    member_id     uuid NOT NULL,
    issued_at     timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    used_store_id text,
    PRIMARY KEY (mall_id, code_hash),
    FOREIGN KEY (mall_id, member_id) REFERENCES members
);
CREATE INDEX checkout_codes_member ON checkout_codes (mall_id, member_id, expires_at);
