-- Commitment cards (支付分先享卡): offers, cards, discounts applied at checkout, counted
-- purchases, and the pay-score clawback queue of failed cards.

-- The slice of member's directory the commitment RPCs check callers against, fed by
-- member.directory.credential_upserted / store_upserted (only hashes of secrets).
CREATE TABLE commitment_credentials (
    credential_id text PRIMARY KEY,
    mall_id       text NOT NULL,
    tenant_id     text NOT NULL DEFAULT '',
    secret_hash   text NOT NULL,
    revoked       boolean NOT NULL DEFAULT false
);

CREATE TABLE commitment_stores (
    mall_id   text NOT NULL,
    store_id  text NOT NULL,
    tenant_id text NOT NULL,
    PRIMARY KEY (mall_id, store_id)
);

CREATE TABLE commitment_offers (
    mall_id            text NOT NULL,
    offer_id           text NOT NULL,
    tenant_id          text NOT NULL,
    request_id         text NOT NULL,
    title              text NOT NULL,
    store_ids          text[] NOT NULL,
    purchases_required integer NOT NULL CHECK (purchases_required > 0),
    window_days        integer NOT NULL CHECK (window_days > 0),
    min_amount_fen     bigint NOT NULL CHECK (min_amount_fen >= 0),
    discount_fen       bigint NOT NULL CHECK (discount_fen > 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, offer_id),
    UNIQUE (mall_id, tenant_id, request_id)
);

CREATE TABLE commitment_cards (
    mall_id            text NOT NULL,
    card_id            uuid NOT NULL,
    offer_id           text NOT NULL,
    tenant_id          text NOT NULL,
    member_id          text NOT NULL,
    store_ids          text[] NOT NULL,
    purchases_required integer NOT NULL,
    min_amount_fen     bigint NOT NULL,
    discount_fen       bigint NOT NULL,
    appid              text NOT NULL,
    openid             text NOT NULL,
    accepted_at        timestamptz NOT NULL,
    deadline           timestamptz NOT NULL,
    status             text NOT NULL DEFAULT 'active'
                       CHECK (status IN ('active', 'fulfilled', 'failed')),
    purchases_made     integer NOT NULL DEFAULT 0,
    discount_given_fen bigint NOT NULL DEFAULT 0,
    reminded_at        timestamptz,
    settled_at         timestamptz,
    PRIMARY KEY (mall_id, card_id),
    UNIQUE (mall_id, offer_id, member_id)
);
-- Checkout and payment lookups, and the deadline sweep / reminder across malls.
CREATE INDEX commitment_cards_member ON commitment_cards (mall_id, member_id);
CREATE INDEX commitment_cards_due ON commitment_cards (deadline) WHERE status = 'active';

-- A discount the POS was told to apply; matched to the payment that follows.
CREATE TABLE commitment_applications (
    mall_id          text NOT NULL,
    application_id   uuid NOT NULL,
    card_id          uuid NOT NULL,
    store_id         text NOT NULL,
    request_id       text NOT NULL,
    order_amount_fen bigint NOT NULL,
    discount_fen     bigint NOT NULL,
    applied_at       timestamptz NOT NULL,
    transaction_id   text,
    PRIMARY KEY (mall_id, application_id),
    UNIQUE (mall_id, store_id, request_id),
    FOREIGN KEY (mall_id, card_id) REFERENCES commitment_cards (mall_id, card_id)
);
CREATE INDEX commitment_applications_open
    ON commitment_applications (mall_id, card_id, store_id) WHERE transaction_id IS NULL;

CREATE TABLE commitment_purchases (
    mall_id        text NOT NULL,
    card_id        uuid NOT NULL,
    transaction_id text NOT NULL,
    store_id       text NOT NULL,
    amount_fen     bigint NOT NULL,
    discount_fen   bigint NOT NULL,
    paid_at        timestamptz NOT NULL,
    number         integer NOT NULL,
    PRIMARY KEY (mall_id, card_id, transaction_id),
    FOREIGN KEY (mall_id, card_id) REFERENCES commitment_cards (mall_id, card_id)
);

-- The pay-score deduction of a failed card: written with the failure (an outbox for the
-- platform call), worked by the clawback worker with leases and backoff.
CREATE TABLE commitment_clawbacks (
    mall_id         text NOT NULL,
    card_id         uuid NOT NULL,
    member_id       text NOT NULL,
    appid           text NOT NULL,
    openid          text NOT NULL,
    amount_fen      bigint NOT NULL CHECK (amount_fen > 0),
    -- The card's window: the pay-score order's service period.
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    out_order_no    text NOT NULL UNIQUE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'collected', 'refused')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_until    timestamptz,
    last_error_code text NOT NULL DEFAULT '',
    last_error      text NOT NULL DEFAULT '',
    platform_order  text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    collected_at    timestamptz,
    PRIMARY KEY (mall_id, card_id),
    FOREIGN KEY (mall_id, card_id) REFERENCES commitment_cards (mall_id, card_id)
);
CREATE INDEX commitment_clawbacks_due ON commitment_clawbacks (next_attempt_at)
    WHERE status = 'pending';
