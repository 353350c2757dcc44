-- Earning rules, one row per version. A put appends the next version of a rule; no version
-- is ever changed, so every credit's rule_version ('<rule_id>@<version>') can be looked up
-- as it was. A version is in force from recorded_at until the next version's recorded_at.
CREATE TABLE earning_rules (
    mall_id         text NOT NULL,
    rule_id         text NOT NULL CHECK (rule_id <> ''),
    version         bigint NOT NULL CHECK (version > 0),
    name            text NOT NULL DEFAULT '',
    tier_code       text NOT NULL DEFAULT '',
    tenant_id       text NOT NULL DEFAULT '',
    sources         text[] NOT NULL DEFAULT '{}',
    spend_unit_fen  bigint NOT NULL CHECK (spend_unit_fen > 0),
    points_per_unit bigint NOT NULL CHECK (points_per_unit >= 0),
    min_amount_fen  bigint NOT NULL DEFAULT 0 CHECK (min_amount_fen >= 0),
    priority        integer NOT NULL DEFAULT 0,
    starts_at       timestamptz,
    ends_at         timestamptz,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, rule_id, version),
    CHECK (starts_at IS NULL OR ends_at IS NULL OR ends_at > starts_at)
);

CREATE FUNCTION earning_rules_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'earning_rules is append-only: % refused', TG_OP;
END $$;
CREATE TRIGGER earning_rules_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON earning_rules
    FOR EACH STATEMENT EXECUTE FUNCTION earning_rules_are_append_only();

-- Which rule version produced a credit ('base-1' for the foundation's 1 point per yuan).
ALTER TABLE ledger ADD COLUMN rule_version text NOT NULL DEFAULT '';
