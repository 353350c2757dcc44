-- Identity merges (one member per person per mall), tier benefits, shopping guides.

-- A MERGED member points at its survivor; merged_into is always a live (active) member:
-- absorbing a survivor re-points those merged into it.
ALTER TABLE members ADD COLUMN merged_into uuid;
ALTER TABLE members ADD COLUMN merged_at timestamptz;
ALTER TABLE members ADD CONSTRAINT members_merged_state
    CHECK ((status = 'merged') = (merged_into IS NOT NULL));

-- The audit trail of merges: who, why, when; a request id is carried out once.
CREATE TABLE member_merges (
    mall_id            text NOT NULL,
    merge_request_id   text NOT NULL CHECK (merge_request_id ~ '^[\x21-\x7e]{1,64}$'),
    survivor_member_id uuid NOT NULL,
    merged_member_id   uuid NOT NULL,
    operator           text NOT NULL CHECK (operator <> ''),
    reason             text NOT NULL CHECK (reason <> ''),
    survivor_tier      text NOT NULL,
    merged_tier        text NOT NULL,
    moved_payments     integer NOT NULL,
    merged_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, merge_request_id),
    UNIQUE (mall_id, merged_member_id),
    FOREIGN KEY (mall_id, survivor_member_id) REFERENCES members,
    FOREIGN KEY (mall_id, merged_member_id) REFERENCES members,
    CHECK (survivor_member_id <> merged_member_id)
);

-- What each tier gives (shown to the shopper and the POS; BenefitsChanged compares them).
CREATE TABLE tier_benefits (
    mall_id      text NOT NULL,
    tier_code    text NOT NULL,
    benefit_code text NOT NULL CHECK (benefit_code ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    title        text NOT NULL CHECK (title <> ''),
    description  text NOT NULL DEFAULT '',
    PRIMARY KEY (mall_id, tier_code, benefit_code),
    FOREIGN KEY (mall_id, tier_code) REFERENCES tiers ON DELETE CASCADE
);

-- Shopping guides (导购) of tenants' stores, and the members bound to them (one per tenant).
CREATE TABLE guides (
    mall_id    text NOT NULL,
    guide_id   text NOT NULL CHECK (guide_id ~ '^[a-z0-9][a-z0-9-]{0,39}$'),
    tenant_id  text NOT NULL,
    store_id   text NOT NULL,
    name       text NOT NULL CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, guide_id),
    FOREIGN KEY (mall_id, store_id) REFERENCES stores
);

CREATE TABLE guide_bindings (
    mall_id   text NOT NULL,
    member_id uuid NOT NULL,
    tenant_id text NOT NULL,
    guide_id  text NOT NULL,
    bound_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, member_id, tenant_id),
    FOREIGN KEY (mall_id, member_id) REFERENCES members,
    FOREIGN KEY (mall_id, guide_id) REFERENCES guides
);
CREATE INDEX guide_bindings_guide ON guide_bindings (mall_id, guide_id, bound_at, member_id);
